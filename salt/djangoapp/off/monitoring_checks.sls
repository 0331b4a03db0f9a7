{#- The monitoring checks when no agent runs them (NRPE and the Zabbix agent both
    off, and clean.sls): the sudo rules that let the agents' users run the apps'
    checks removed, and the monitoring-check script. The monitoring plugins and
    sudo stay installed. Nothing to do on a host that never had them. #}
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import djangoapp with context %}

djangoapp-monitoring-sudoers-file-absent:
  file.absent:
    - name: /etc/sudoers.d/djangoapp-monitoring

djangoapp-monitoring-check-script-file-absent:
  file.absent:
    - name: {{ djangoapp.paths.lib_dir }}/monitoring-check
