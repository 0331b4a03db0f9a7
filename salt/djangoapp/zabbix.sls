{#- The Zabbix agent, when the pillar turns it on (`djangoapp:monitoring:zabbix`):
    passive checks for `server` only, active checks sent to it, and the checks of
    `djangoapp.monitoring_checks` (derived by djangoapp.derive_settings) as items
    djangoapp.status.<name> (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN) and
    djangoapp.output.<name> (the check's line). No flexible items and no system.run:
    nothing the server sends becomes part of a command. The whole configuration file
    is ours. From EPEL on RedHat. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set zabbix = djangoapp.monitoring.zabbix %}

{%- if zabbix.enabled %}

include:
  - .packages
  - .monitoring_checks

djangoapp-zabbix-packages-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.zabbix | json }}
    - require:
      - pkg: djangoapp-base-packages-installed
    # The sudo rules name the user that the package creates.
    - require_in:
      - file: djangoapp-monitoring-sudoers-file-managed

djangoapp-zabbix-config-file-managed:
  file.managed:
    - name: {{ zabbix.conf_file }}
    - source: salt://{{ tpldir }}/files/zabbix_agentd.conf.jinja
    - template: jinja
    - user: root
    # The agent reads it as its own user.
    - group: {{ zabbix.group }}
    - mode: "0640"
    - context:
        zabbix: {{ zabbix | json }}
        servers: {{ (djangoapp.monitoring_ports
          | selectattr("name", "equalto", "zabbix") | first).sources | json }}
        checks: {{ djangoapp.monitoring_checks | json }}
    - require:
      - pkg: djangoapp-zabbix-packages-installed

djangoapp-zabbix-service-running:
  service.running:
    - name: {{ zabbix.service }}
    - enable: true
    - require:
      - file: djangoapp-monitoring-check-script-file-managed
      - file: djangoapp-monitoring-sudoers-file-managed
      - pkg: djangoapp-monitoring-checks-packages-installed
    - watch:
      - file: djangoapp-zabbix-config-file-managed
{%- else %}

include:
  - .off.zabbix
{%- endif %}
