{#- The lb role taken off a minion (`djangoapp:roles` without lb, and clean.sls),
    where HAProxy's configuration is the one the formula wrote: HAProxy stopped and
    disabled, that configuration, the apps' certificates and keys and lb.json
    removed (reinstalling the package brings the distribution's configuration
    back). A HAProxy configured by someone else is left alone; the package stays.
    Nothing to do on a minion that never had the role. #}
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import djangoapp with context %}
{%- set lb = djangoapp.lb %}
{%- set ours = "grep -qsF 'Managed by Salt (djangoapp)' " ~ lb.config_file %}

djangoapp-lb-haproxy-service-dead:
  service.dead:
    - name: haproxy
    - enable: false
    - onlyif: {{ ours }}

{%- for path in [lb.config_file, lb.tls_dir, djangoapp.paths.config_root ~ "/lb.json"] %}

djangoapp-lb-file-absent-{{ path }}:
  file.absent:
    - name: {{ path }}
    - onlyif: {{ ours }}
    - require:
      - service: djangoapp-lb-haproxy-service-dead
{%-   if path != lb.config_file %}
    - require_in:
      - file: djangoapp-lb-file-absent-{{ lb.config_file }}
{%-   endif %}
{%- endfor %}
