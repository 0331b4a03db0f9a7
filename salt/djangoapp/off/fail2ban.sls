{#- fail2ban switched off (`djangoapp:fail2ban:enabled: false`, and clean.sls), where
    the formula had turned it on (its jail file is there): the service stopped and
    disabled (fail2ban removes its own nftables table as it stops), our jail file
    removed. A fail2ban without our jail is left alone. The packages stay
    installed. Nothing to do on a host that never had it. #}
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import djangoapp with context %}
{%- set jail = "/etc/fail2ban/jail.d/djangoapp.local" %}

djangoapp-fail2ban-service-dead:
  service.dead:
    - name: {{ djangoapp.fail2ban.service }}
    - enable: false
    - onlyif: test -e {{ jail }}

djangoapp-fail2ban-jail-file-absent:
  file.absent:
    - name: {{ jail }}
    - require:
      - service: djangoapp-fail2ban-service-dead
