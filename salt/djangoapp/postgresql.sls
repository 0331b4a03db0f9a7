{#- PostgreSQL client tools (pg_dump for pre-migration backups, libpq headers) for every
    app on PostgreSQL, and a server on this host for the apps whose database is here
    (`djangoapp.database_apps`: local ones, on a minion with the db role): listening
    on localhost only, one role (no superuser) and one database per app. On the db
    minion of a fleet it listens on its private address too, and each app's role may
    log in to its database from the web minions only (pg_hba.conf). #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set pg = djangoapp.postgresql %}
{%- set postgresql_apps = ((djangoapp.apps.values() | list) + djangoapp.database_apps)
      | selectattr("database.engine", "equalto", "postgresql") | list %}
{%- set local_apps = djangoapp.database_apps
      | selectattr("database.engine", "equalto", "postgresql") | list %}
{%- set web_clients = djangoapp.fleet.peers.web | map(attribute="address") | list %}

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
        listen_addresses = '{{ djangoapp.database_listen | join(",") }}'
        password_encryption = 'scram-sha-256'
    - require:
      - pkg: djangoapp-postgresql-server-packages-installed

{%-   if djangoapp.fleet.fleet %}

{#-   Added at the end: the distribution's lines above match local connections only. #}
djangoapp-postgresql-fleet-clients-hba-managed:
  file.blockreplace:
    - name: {{ pg.hba_file }}
    - marker_start: "# BEGIN djangoapp: the web minions of the fleet (managed by Salt)"
    - marker_end: "# END djangoapp"
    - content: |
{%-   for app in local_apps %}
{%-     for address in web_clients %}
        host {{ app.database.name }} {{ app.database.user }} {{ address }}/{{ 128 if ":" in address else 32 }} scram-sha-256
{%-     endfor %}
{%-   endfor %}
    - append_if_not_found: true
    - require:
      - pkg: djangoapp-postgresql-server-packages-installed
{%-     if pg.initdb %}
      - cmd: djangoapp-postgresql-cluster-initialized
{%-     endif %}
    - watch_in:
      - service: djangoapp-postgresql-service-running
{%-   endif %}

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
