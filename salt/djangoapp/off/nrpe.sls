{#- NRPE switched off (`djangoapp:monitoring:nrpe:enabled: false`, and
    clean.sls), where its configuration file is the one the formula wrote (in
    place of the package's): the service stopped and disabled, and that file
    removed (reinstalling the package brings the distribution's back). An agent
    configured by someone else is left alone. The packages stay installed.
    Nothing to do on a host that never had it. #}
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import djangoapp with context %}
{%- set nrpe = djangoapp.monitoring.nrpe %}
{%- set ours = "grep -qsF 'Managed by Salt (djangoapp)' " ~ nrpe.conf_file %}

djangoapp-nrpe-service-dead:
  service.dead:
    - name: {{ nrpe.service }}
    - enable: false
    - onlyif: {{ ours }}

djangoapp-nrpe-config-file-absent:
  file.absent:
    - name: {{ nrpe.conf_file }}
    - onlyif: {{ ours }}
    - require:
      - service: djangoapp-nrpe-service-dead
