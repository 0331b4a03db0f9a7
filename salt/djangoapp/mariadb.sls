{#- The MariaDB client (mysqldump for pre-migration backups) and mysqlclient's build
    dependencies for every app on MySQL/MariaDB, and a server on this host for the apps
    whose database is here (`djangoapp.database_apps`): listening on 127.0.0.1 only, LOAD
    DATA LOCAL off, no anonymous users, no test database, one database and one user per
    app. On the db minion of a fleet it listens on its private address too
    (`mariadb:bind`), and each app's user has one account per web minion address
    besides its local ones; an account from an address that is no longer a web
    minion's is dropped. Accounts name addresses, never host names: no name is
    resolved (skip-name-resolve).

    The SQL runs through the `mysql` client as root over the unix socket (root's
    unix_socket authentication): nothing needs a Python MySQL driver in Salt's own
    environment, and passwords travel on stdin, never on a command line. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set mariadb = djangoapp.mariadb %}
{%- set mysql_apps = ((djangoapp.apps.values() | list) + djangoapp.database_apps)
      | selectattr("database.engine", "equalto", "mysql") | list %}
{%- set local_apps = djangoapp.database_apps
      | selectattr("database.engine", "equalto", "mysql") | list %}
{%- set mysql = "mysql --batch --skip-column-names" %}
{%- set web_clients = djangoapp.fleet.peers.web | map(attribute="address") | list %}

{%- from tpldir ~ "/sql.jinja" import sql_string %}

{%- if mysql_apps %}

include:
  - .packages

djangoapp-mariadb-client-packages-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.mariadb_client | json }}
    - require:
      - pkg: djangoapp-base-packages-installed
{%- endif %}

{%- if local_apps %}

djangoapp-mariadb-server-package-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.mariadb_server | json }}
    - require:
      - pkg: djangoapp-mariadb-client-packages-installed

djangoapp-mariadb-settings-file-managed:
  file.managed:
    - name: {{ mariadb.conf_file }}
    - mode: "0644"
    - makedirs: true
    - contents: |
        # Managed by Salt (djangoapp).
        [mysqld]
        bind-address = {{ mariadb.bind | join(",") }}
        skip-name-resolve = 1
        local-infile = 0
    - require:
      - pkg: djangoapp-mariadb-server-package-installed

djangoapp-mariadb-service-running:
  service.running:
    - name: {{ mariadb.service }}
    - enable: true
    - watch:
      - file: djangoapp-mariadb-settings-file-managed

{#- cmd.run as a check: the state runs (onlyif) or is skipped (unless) when the
    query prints a row. #}
{%-   macro query_check(sql, quiet=false) %}
      - fun: cmd.run
        cmd: {{ mysql }}
        stdin: {{ sql | json }}
        python_shell: false
{%-     if quiet %}
        output_loglevel: quiet
{%-     endif %}
{%-   endmacro %}

djangoapp-mariadb-anonymous-users-absent:
  cmd.run:
    - name: {{ mysql }}
    - stdin: {{ ("SELECT CONCAT('DROP USER ', GROUP_CONCAT(QUOTE(User), '@', QUOTE(Host)))"
        ~ " INTO @drop FROM mysql.user WHERE User = ''; EXECUTE IMMEDIATE @drop;") | json }}
    - onlyif:
      {{- query_check("SELECT 1 FROM mysql.user WHERE User = '' LIMIT 1;") }}
    - require:
      - service: djangoapp-mariadb-service-running

djangoapp-mariadb-test-database-absent:
  cmd.run:
    - name: {{ mysql }}
    - stdin: {{ ("DROP DATABASE IF EXISTS test;"
        ~ " DELETE FROM mysql.db WHERE Db IN ('test', 'test\\_%'); FLUSH PRIVILEGES;")
        | json }}
    - onlyif:
      {{- query_check("SELECT 1 FROM information_schema.schemata"
          ~ " WHERE schema_name = 'test' UNION SELECT 1 FROM mysql.db"
          ~ " WHERE Db IN ('test', 'test\\_%') LIMIT 1;") }}
    - require:
      - service: djangoapp-mariadb-service-running

{%-   for app in local_apps %}
{%-     set db = app.database %}
{#-     GRANT reads _ and % in a database name as wildcards. #}
{%-     set grant_db = db.name | replace("_", "\\_") %}
{#-     One account for the unix socket (localhost), one for TCP to 127.0.0.1, and
        one per web minion of a fleet. #}
{%-     set hosts = ["localhost", "127.0.0.1"] + web_clients %}
{%-     set host_list = hosts | map("regex_replace", "^(.*)$", "'\\1'") | join(", ") %}
{%-     set password = sql_string(db.password) %}
{%-     set user_sql = [] %}
{%-     set grant_sql = [] %}
{%-     for host in hosts %}
{%-       set account = sql_string(db.user) ~ "@" ~ sql_string(host) %}
{%-       do user_sql.append("CREATE USER IF NOT EXISTS " ~ account ~ " IDENTIFIED BY "
            ~ password ~ "; ALTER USER " ~ account ~ " IDENTIFIED BY " ~ password ~ ";") %}
{%-       do grant_sql.append("GRANT ALL PRIVILEGES ON `" ~ grant_db ~ "`.* TO "
            ~ account ~ ";") %}
{%-     endfor %}

djangoapp-{{ app.name }}-mariadb-database-present:
  cmd.run:
    - name: {{ mysql }}
    - stdin: {{ ("CREATE DATABASE IF NOT EXISTS `" ~ db.name ~ "`"
        ~ " CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;") | json }}
    - unless:
      {{- query_check("SELECT 1 FROM information_schema.schemata WHERE schema_name = "
          ~ sql_string(db.name) ~ ";") }}
    - require:
      - service: djangoapp-mariadb-service-running

{#-     Set again whenever the pillar's password is not the one MariaDB has. #}
djangoapp-{{ app.name }}-mariadb-user-present:
  cmd.run:
    - name: {{ mysql }}
    - stdin: {{ user_sql | join(" ") | json }}
    - output_loglevel: quiet
    - hide_output: true
    - unless:
      {{- query_check("SELECT 1 FROM mysql.user WHERE User = " ~ sql_string(db.user)
          ~ " AND Host IN (" ~ host_list ~ ")"
          ~ " AND authentication_string = PASSWORD(" ~ password ~ ")"
          ~ " HAVING COUNT(*) = " ~ hosts | length ~ ";", quiet=true) }}
    - require:
      - service: djangoapp-mariadb-service-running

djangoapp-{{ app.name }}-mariadb-stale-accounts-absent:
  cmd.run:
    - name: {{ mysql }}
    - stdin: {{ ("SELECT CONCAT('DROP USER ', GROUP_CONCAT(QUOTE(User), '@', QUOTE(Host)))"
        ~ " INTO @drop FROM mysql.user WHERE User = " ~ sql_string(db.user)
        ~ " AND Host NOT IN (" ~ host_list ~ "); EXECUTE IMMEDIATE @drop;") | json }}
    - onlyif:
      {{- query_check("SELECT 1 FROM mysql.user WHERE User = " ~ sql_string(db.user)
          ~ " AND Host NOT IN (" ~ host_list ~ ") LIMIT 1;") }}
    - require:
      - service: djangoapp-mariadb-service-running

djangoapp-{{ app.name }}-mariadb-grants-present:
  cmd.run:
    - name: {{ mysql }}
    - stdin: {{ grant_sql | join(" ") | json }}
    - unless:
      {{- query_check("SELECT 1 FROM mysql.db WHERE Db = " ~ sql_string(grant_db)
          ~ " AND User = " ~ sql_string(db.user) ~ " AND Host IN (" ~ host_list ~ ")"
          ~ " AND Select_priv = 'Y' AND Alter_priv = 'Y' AND Create_priv = 'Y'"
          ~ " AND Index_priv = 'Y' AND References_priv = 'Y'"
          ~ " HAVING COUNT(*) = " ~ hosts | length ~ ";") }}
    - require:
      - cmd: djangoapp-{{ app.name }}-mariadb-database-present
      - cmd: djangoapp-{{ app.name }}-mariadb-user-present
{%-   endfor %}
{%- endif %}
