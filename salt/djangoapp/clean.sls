{#- Removes what the formula set up: every app taken down (takedown.jinja: a last
    dump of each database first), the host features switched off (off/host.sls),
    then the formula's services stopped and disabled and its own files removed.
    Kept: packages, the databases' data and settings, the apps' files and users, and
    every dump under the backup root; with `djangoapp:clean:purge` (or an app's own
    `purge`) each app's database, users and files go too, the dumps still kept.
      salt <minion> state.apply djangoapp.clean #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- from tpldir ~ "/takedown.jinja" import take_down with context %}
{%- set paths = djangoapp.paths %}
{%- set every_app = (djangoapp.apps.values() | list) + (djangoapp.absent_apps.values() | list) %}
{%- set apps_down = [] %}
{%- for app in every_app %}
{%-   do apps_down.append({"test": "djangoapp-" ~ app.name ~ "-taken-down"}) %}
{%- endfor %}

include:
  - .off.host
  - .off.lb
{%- for app in every_app %}
{{ take_down(djangoapp, app, djangoapp.clean.purge or app.purge, reload_nginx=false) }}
{%- endfor %}

{%- for part in ["nginx", "supervisor", "redis", "memcached", "postgresql", "mariadb"] %}

djangoapp-clean-{{ part }}-service-dead:
  service.dead:
    - name: {{ djangoapp[part].service }}
    - enable: false
{%-   if apps_down %}
    - require: {{ apps_down | json }}
{%-   endif %}
{%- endfor %}

{%- for path in [
      djangoapp.nginx.conf_dir ~ "/djangoapp.conf",
      djangoapp.nginx.tls_settings_file,
      djangoapp.tls.acme_webroot,
      paths.config_root,
      paths.run_root,
      paths.lib_dir,
      paths.tools_dir,
      paths.python_dir,
      paths.uv_cache,
    ] %}

djangoapp-clean-file-absent-{{ path }}:
  file.absent:
    - name: {{ path }}
    - require:
      - service: djangoapp-clean-nginx-service-dead
{%- endfor %}
