{#- sshd no longer hardened by us (`djangoapp:ssh:harden: false`, and clean.sls): our
    drop-in removed and sshd reloaded, back to the host's own sshd_config. sshd
    itself keeps running. Nothing to do on a host that never had the drop-in. #}
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import djangoapp with context %}

djangoapp-ssh-hardening-file-absent:
  file.absent:
    - name: /etc/ssh/sshd_config.d/00-djangoapp.conf

djangoapp-ssh-service-reloaded:
  module.run:
    - service.reload:
      - name: {{ djangoapp.ssh.service }}
    - onchanges:
      - file: djangoapp-ssh-hardening-file-absent
