{#- The Zabbix agent switched off (`djangoapp:monitoring:zabbix:enabled: false`, and
    clean.sls), where its configuration file is the one the formula wrote (in
    place of the package's): the service stopped and disabled, and that file
    removed (reinstalling the package brings the distribution's back). An agent
    configured by someone else is left alone. The packages stay installed.
    Nothing to do on a host that never had it. #}
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import djangoapp with context %}
{%- set zabbix = djangoapp.monitoring.zabbix %}
{%- set ours = "grep -qsF 'Managed by Salt (djangoapp)' " ~ zabbix.conf_file %}

djangoapp-zabbix-service-dead:
  service.dead:
    - name: {{ zabbix.service }}
    - enable: false
    - onlyif: {{ ours }}

djangoapp-zabbix-config-file-absent:
  file.absent:
    - name: {{ zabbix.conf_file }}
    - onlyif: {{ ours }}
    - require:
      - service: djangoapp-zabbix-service-dead
