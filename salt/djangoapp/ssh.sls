{#- sshd hardened by a drop-in, when the pillar says so (`djangoapp:ssh:harden`): no
    password or keyboard-interactive login, root by key at most, few tries, no
    forwarding. sshd keeps the first value it reads for a keyword and reads the
    drop-ins (sorted) where sshd_config includes them, at its top on Debian 12 and
    EL9: this file, named to sort first, wins. The file is checked on its own before
    it is written, and the whole configuration with `sshd -t` before sshd reloads. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set ssh = djangoapp.ssh %}

{%- if ssh.harden %}
{%-   set dropin = "/etc/ssh/sshd_config.d/00-djangoapp.conf" %}
{#-   YAML reads an unquoted `no` as false. #}
{%-   set root_login = "no" if ssh.permit_root_login in [false, "no"]
        else ssh.permit_root_login %}

include:
  - .packages

djangoapp-ssh-server-package-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.ssh | json }}
    - require:
      - pkg: djangoapp-base-packages-installed

# EL generates host keys when sshd first starts; `sshd -t` needs them before that.
djangoapp-ssh-host-keys-generated:
  cmd.run:
    - name: ssh-keygen -A
    - creates: /etc/ssh/ssh_host_ed25519_key
    - require:
      - pkg: djangoapp-ssh-server-package-installed

djangoapp-ssh-hardening-file-managed:
  file.managed:
    - name: {{ dropin }}
    - makedirs: true
    - mode: "0644"
    - check_cmd: {{ ssh.sshd }} -t -f
    - contents: |
        # Managed by Salt (djangoapp): hardened sshd settings.
        PermitRootLogin {{ root_login }}
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        PermitEmptyPasswords no
        MaxAuthTries {{ ssh.max_auth_tries }}
        X11Forwarding no
        AllowTcpForwarding no
        AllowAgentForwarding no
    - require:
      - cmd: djangoapp-ssh-host-keys-generated

djangoapp-ssh-config-tested:
  cmd.run:
    - name: {{ ssh.sshd }} -t
    - onchanges:
      - file: djangoapp-ssh-hardening-file-managed

djangoapp-ssh-service-running:
  service.running:
    - name: {{ ssh.service }}
    - enable: true
    - reload: true
    - require:
      - cmd: djangoapp-ssh-config-tested
    - watch:
      - file: djangoapp-ssh-hardening-file-managed
{%- else %}

include:
  - .off.ssh
{%- endif %}
