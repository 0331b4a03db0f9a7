{#- What NRPE and the Zabbix agent run (`djangoapp.monitoring_checks`, derived by
    djangoapp.derive_settings): the monitoring plugins, the monitoring-check script,
    and the sudo rules that let the agents' users run each app's checks, those exact
    command lines and no other, as the app's user. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set monitoring = djangoapp.monitoring %}
{%- set agents = [] %}
{%- for part in ["nrpe", "zabbix"] if monitoring[part].enabled %}
{%-   do agents.append(monitoring[part].user) %}
{%- endfor %}

{%- if agents %}
{%-   set app_checks = djangoapp.monitoring_checks | selectattr("user") | list %}

include:
  - .packages
  - .app

djangoapp-monitoring-checks-packages-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.monitoring_checks | json }}
    - require:
      - pkg: djangoapp-base-packages-installed

djangoapp-monitoring-check-script-file-managed:
  file.managed:
    - name: {{ djangoapp.paths.lib_dir }}/monitoring-check
    - source: salt://{{ tpldir }}/files/monitoring-check.py
    - makedirs: true
    - mode: "0755"
    - require:
      - file: djangoapp-database-module-file-managed

djangoapp-monitoring-sudoers-file-managed:
  file.managed:
    - name: /etc/sudoers.d/djangoapp-monitoring
    - user: root
    - group: root
    - mode: "0440"
    - check_cmd: /usr/sbin/visudo -c -f
    - contents: |
        # Managed by Salt (djangoapp): the monitoring agents run each app's checks
        # as the app's user, these command lines exactly. Not logged: they run every
        # few minutes.
{%-   if app_checks %}
{%-     for user, checks in app_checks | groupby("user") %}
        Cmnd_Alias DJANGOAPP_{{ user | upper }}_CHECKS = {{ checks | map(attribute="command") | join(", ") }}
        {{ agents | join(", ") }} ALL = ({{ user }}) NOPASSWD: DJANGOAPP_{{ user | upper }}_CHECKS
        Defaults!DJANGOAPP_{{ user | upper }}_CHECKS !syslog, !pam_session
{%-     endfor %}
{%-   endif %}
    - require:
      - pkg: djangoapp-monitoring-checks-packages-installed
      - sls: {{ tpldir }}.app
{%- else %}

include:
  - .off.monitoring_checks
{%- endif %}
