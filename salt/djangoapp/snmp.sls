{#- snmpd for LibreNMS, when the pillar turns it on (`djangoapp:monitoring:snmp`):
    SNMP v2c on UDP on every address, read-only, answering the `allowed` sources
    with the pillar's community and nobody else. The community is a secret: the
    template reads it from the pillar itself, so it is in no state's arguments, and
    no diff of the file is shown. The whole configuration file is ours. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set snmp = djangoapp.monitoring.snmp %}

{%- if snmp.enabled %}

include:
  - .packages

djangoapp-snmp-packages-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.snmp | json }}
    - require:
      - pkg: djangoapp-base-packages-installed

djangoapp-snmp-config-file-managed:
  file.managed:
    - name: {{ snmp.conf_file }}
    - source: salt://{{ tpldir }}/files/snmpd.conf.jinja
    - template: jinja
    - user: root
    - group: {{ snmp.group }}
    - mode: "0640"
    - show_changes: false
    - context:
        port: {{ snmp.port }}
        allowed: {{ snmp.allowed | json }}
        location: {{ snmp.location | json }}
        contact: {{ snmp.contact | json }}
    - require:
      - pkg: djangoapp-snmp-packages-installed

djangoapp-snmp-service-running:
  service.running:
    - name: {{ snmp.service }}
    - enable: true
    - watch:
      - file: djangoapp-snmp-config-file-managed
{%- else %}

include:
  - .off.snmp
{%- endif %}
