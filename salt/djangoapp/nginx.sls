{#- Nginx in front of each app: static and media files served from disk, everything else
    proxied to the app's Gunicorn socket. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set nginx = djangoapp.nginx %}

include:
  - .packages
  - .release

djangoapp-nginx-package-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.nginx | json }}
    - require:
      - pkg: djangoapp-base-packages-installed

{%- if nginx.site_enabled_dir %}

djangoapp-nginx-distribution-default-site-absent:
  file.absent:
    - name: {{ nginx.site_enabled_dir }}/default
    - require:
      - pkg: djangoapp-nginx-package-installed
    - require_in:
      - cmd: djangoapp-nginx-config-tested
{%- endif %}

djangoapp-nginx-http-settings-file-managed:
  file.managed:
    - name: {{ nginx.conf_dir }}/djangoapp.conf
    - source: salt://{{ tpldir }}/files/nginx-http.conf.jinja
    - template: jinja
    - mode: "0644"
    - require:
      - pkg: djangoapp-nginx-package-installed

{%- for name, app in djangoapp.apps.items() %}
{%-   set site_file = nginx.site_dir ~ "/" ~ app.service ~ ".conf" %}

djangoapp-{{ name }}-nginx-site-file-managed:
  file.managed:
    - name: {{ site_file }}
    - source: salt://{{ tpldir }}/files/nginx-site.conf.jinja
    - template: jinja
    - mode: "0644"
    - context:
        app: {{ app | json }}
    - require:
      - pkg: djangoapp-nginx-package-installed
      - djangoapp: djangoapp-{{ name }}-release-deployed
    - require_in:
      - cmd: djangoapp-nginx-config-tested
    - watch_in:
      - service: djangoapp-nginx-service-running
{%-   if nginx.site_enabled_dir %}

djangoapp-{{ name }}-nginx-site-enabled:
  file.symlink:
    - name: {{ nginx.site_enabled_dir }}/{{ app.service }}.conf
    - target: {{ site_file }}
    - require:
      - file: djangoapp-{{ name }}-nginx-site-file-managed
    - require_in:
      - cmd: djangoapp-nginx-config-tested
    - watch_in:
      - service: djangoapp-nginx-service-running
{%-   endif %}
{%- endfor %}

djangoapp-nginx-config-tested:
  cmd.run:
    - name: nginx -t -q
    - onchanges:
      - file: djangoapp-nginx-http-settings-file-managed
{%- for name in djangoapp.apps %}
      - file: djangoapp-{{ name }}-nginx-site-file-managed
{%- endfor %}

djangoapp-nginx-service-running:
  service.running:
    - name: {{ nginx.service }}
    - enable: true
    - reload: true
    - require:
      - cmd: djangoapp-nginx-config-tested
    - watch:
      - file: djangoapp-nginx-http-settings-file-managed
