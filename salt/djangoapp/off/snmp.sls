{#- snmpd switched off (`djangoapp:monitoring:snmp:enabled: false`, and
    clean.sls), where its configuration file is the one the formula wrote (in
    place of the package's): the service stopped and disabled, and that file
    removed (reinstalling the package brings the distribution's back). An agent
    configured by someone else is left alone. The packages stay installed.
    Nothing to do on a host that never had it. #}
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import djangoapp with context %}
{%- set snmp = djangoapp.monitoring.snmp %}
{%- set ours = "grep -qsF 'Managed by Salt (djangoapp)' " ~ snmp.conf_file %}

djangoapp-snmp-service-dead:
  service.dead:
    - name: {{ snmp.service }}
    - enable: false
    - onlyif: {{ ours }}

djangoapp-snmp-config-file-absent:
  file.absent:
    - name: {{ snmp.conf_file }}
    - onlyif: {{ ours }}
    - require:
      - service: djangoapp-snmp-service-dead
