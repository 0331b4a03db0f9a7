{#- Deploys each app's pillar `version` through the release engine, the same code path
    as `salt <minion> djangoapp.release version=...`. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}

include:
  - .tools
  - .postgresql
  - .mariadb
  - .cache
  - .app

{%- for name, app in djangoapp.apps.items() %}
{%-   if app.packages %}

{#- What the app's build needs from the OS (headers of a C library...). #}
djangoapp-{{ name }}-packages-installed:
  pkg.installed:
    - pkgs: {{ app.packages | json }}
    - require:
      - pkg: djangoapp-base-packages-installed
    - require_in:
      - djangoapp: djangoapp-{{ name }}-release-deployed
{%-   endif %}

{%-   if djangoapp.fleet.fleet and app.database.engine != "none" and not app.database.local %}

{#- The first apply of a fleet runs on every minion at once: the db minion may not
    have made the app's role yet. #}
djangoapp-{{ name }}-database-answering:
  djangoapp.database_ready:
    - name: {{ name }}
    - timeout: 600
    - require:
      - file: djangoapp-{{ name }}-environment-file-serialized
      - file: djangoapp-{{ name }}-engine-config-file-serialized
{%-     if app.database.engine == "postgresql" %}
      - pkg: djangoapp-postgresql-client-packages-installed
{%-     elif app.database.engine == "mysql" %}
      - pkg: djangoapp-mariadb-client-packages-installed
{%-     endif %}
    - require_in:
      - djangoapp: djangoapp-{{ name }}-release-deployed
{%-   endif %}

djangoapp-{{ name }}-release-deployed:
  djangoapp.released:
    - name: {{ name }}
    - version: {{ app.version | json }}
    - version_policy: {{ app.version_policy | json }}
    - require:
      - cmd: djangoapp-tools-uv-installed
      - file: djangoapp-{{ name }}-environment-file-serialized
      - file: djangoapp-{{ name }}-gunicorn-config-file-managed
{%-   if app.deploy_key_file %}
      - file: djangoapp-{{ name }}-deploy-key-file-managed
{%-   endif %}
{%-   if app.known_hosts_file %}
      - file: djangoapp-{{ name }}-known-hosts-file-managed
{%-   endif %}
{%-   if app.database.local and app.database.engine == "postgresql" %}
      - postgres_database: djangoapp-{{ name }}-postgresql-database-present
{%-   endif %}
{%-   if app.database.engine == "postgresql" %}
      - pkg: djangoapp-postgresql-client-packages-installed
{%-   endif %}
{%-   if app.database.local and app.database.engine == "mysql" %}
      - cmd: djangoapp-{{ name }}-mariadb-grants-present
{%-   endif %}
{%-   if app.database.engine == "mysql" %}
      - pkg: djangoapp-mariadb-client-packages-installed
{%-   endif %}
{%-   if app.cache.engine in djangoapp.cache_engines %}
      - service: djangoapp-{{ app.cache.engine }}-service-running
{%-   endif %}
{%- endfor %}
