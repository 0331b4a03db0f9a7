{#- fail2ban with an sshd jail, when the pillar turns it on (`djangoapp:fail2ban`):
    sshd's failures read from the journal (`backend = systemd`: Debian 12 has no
    /var/log/auth.log), bans as nftables rules in fail2ban's own table. From EPEL on
    RedHat. The jail file is written before the package is installed, so that the
    service starts with it the first time. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set fail2ban = djangoapp.fail2ban %}

{%- if fail2ban.enabled %}

include:
  - .packages

djangoapp-fail2ban-jail-file-managed:
  file.managed:
    - name: /etc/fail2ban/jail.d/djangoapp.local
    - source: salt://{{ tpldir }}/files/fail2ban-jail.local.jinja
    - template: jinja
    - makedirs: true
    - mode: "0644"
    - context:
        fail2ban: {{ fail2ban | json }}

djangoapp-fail2ban-packages-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.fail2ban | json }}
    - require:
      - pkg: djangoapp-base-packages-installed
      - file: djangoapp-fail2ban-jail-file-managed

djangoapp-fail2ban-service-running:
  service.running:
    - name: {{ fail2ban.service }}
    - enable: true
    - require:
      - pkg: djangoapp-fail2ban-packages-installed
    - watch:
      - file: djangoapp-fail2ban-jail-file-managed
{%- else %}

include:
  - .off.fail2ban
{%- endif %}
