{#- PostgreSQL client tools (pg_dump for pre-migration backups, libpq headers) for every
    app on PostgreSQL, and a server on this host for the apps whose database is local:
    listening on localhost only, one role (no superuser) and one database per app. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set pg = djangoapp.postgresql %}
{%- set postgresql_apps = djangoapp.apps.values()
      | selectattr("database.engine", "equalto", "postgresql") | list %}
{%- set local_apps = postgresql_apps | selectattr("database.local") | list %}

{%- if postgresql_apps %}

include:
  - .packages

djangoapp-postgresql-client-packages-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.postgresql_client | json }}
    # Salt's postgres modules load only once psql exists.
    - reload_modules: true
    - require:
      - pkg: djangoapp-base-packages-installed
{%- endif %}

{%- if local_apps %}

djangoapp-postgresql-server-packages-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.postgresql_server | json }}
    - require:
      - pkg: djangoapp-postgresql-client-packages-installed

{%-   if pg.initdb %}

djangoapp-postgresql-cluster-initialized:
  cmd.run:
    - name: postgresql-setup --initdb
    - creates: {{ pg.data_dir }}/PG_VERSION
    - require:
      - pkg: djangoapp-postgresql-server-packages-installed
    - require_in:
      - file: djangoapp-postgresql-settings-file-managed

djangoapp-postgresql-conf-dir-included:
  file.append:
    - name: {{ pg.data_dir }}/postgresql.conf
    - text: include_dir = 'conf.d'
    - require:
      - cmd: djangoapp-postgresql-cluster-initialized
    - watch_in:
      - service: djangoapp-postgresql-service-running
{%-   endif %}

djangoapp-postgresql-settings-file-managed:
  file.managed:
    - name: {{ pg.conf_dir }}/djangoapp.conf
    - makedirs: true
    - mode: "0644"
    - contents: |
        listen_addresses = 'localhost'
        password_encryption = 'scram-sha-256'
    - require:
      - pkg: djangoapp-postgresql-server-packages-installed

djangoapp-postgresql-service-running:
  service.running:
    - name: {{ pg.service }}
    - enable: true
    - watch:
      - file: djangoapp-postgresql-settings-file-managed

{%-   for app in local_apps %}

djangoapp-{{ app.name }}-postgresql-role-present:
  postgres_user.present:
    - name: {{ app.database.user }}
    - password: {{ app.database.password | string | json }}
    - encrypted: scram-sha-256
    - login: true
    - superuser: false
    - createdb: false
    - createroles: false
    - inherit: true
    - replication: false
    - require:
      - service: djangoapp-postgresql-service-running

djangoapp-{{ app.name }}-postgresql-database-present:
  postgres_database.present:
    - name: {{ app.database.name }}
    - owner: {{ app.database.user }}
    - require:
      - postgres_user: djangoapp-{{ app.name }}-postgresql-role-present
{%-   endfor %}
{%- endif %}
