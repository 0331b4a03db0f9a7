{#- Nightly database dumps, when the pillar turns them on (`djangoapp:backups`): a
    systemd timer runs the backup-databases script at `hour`:`minute` for every app
    of backups.json (`backup_apps`: on one host each app with a database, in a
    fleet the db minion's), into /var/backups/djangoapp/<app>/nightly/, keeping the
    newest `keep` dumps of each app. Run one now with
    `systemctl start djangoapp-backup.service`. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set backups = djangoapp.backups %}
{%- set paths = djangoapp.paths %}
{%- set script = paths.lib_dir ~ "/backup-databases" %}
{%- set apps_file = paths.config_root ~ "/backups.json" %}

{%- if djangoapp.backup_apps %}

include:
  - .app
  - .postgresql

djangoapp-backups-script-file-managed:
  file.managed:
    - name: {{ script }}
    - source: salt://{{ tpldir }}/files/backups-dump.py
    - makedirs: true
    - mode: "0755"
    - require:
      - file: djangoapp-database-module-file-managed

djangoapp-backups-apps-file-serialized:
  file.serialize:
    - name: {{ apps_file }}
    - serializer: json
    - serializer_opts:
      - indent: 2
      - sort_keys: true
    - dataset: {{ djangoapp.backup_apps | json }}
    - mode: "0600"
    - require:
      - file: djangoapp-directory-{{ paths.config_root }}

djangoapp-backups-service-unit-file-managed:
  file.managed:
    - name: /etc/systemd/system/djangoapp-backup.service
    - mode: "0644"
    - contents: |
        # Managed by Salt (djangoapp): one run of the nightly database dumps.
        [Unit]
        Description=djangoapp nightly database dumps
        After=network-online.target postgresql.service mariadb.service

        [Service]
        Type=oneshot
        ExecStart={{ backups.python }} {{ script }} --apps-file {{ apps_file }} --keep {{ backups.keep }}
        Nice=10
        IOSchedulingClass=idle
        UMask=0077
        PrivateTmp=true

djangoapp-backups-timer-unit-file-managed:
  file.managed:
    - name: /etc/systemd/system/djangoapp-backup.timer
    - mode: "0644"
    - contents: |
        # Managed by Salt (djangoapp): the nightly database dumps.
        [Unit]
        Description=djangoapp nightly database dumps

        [Timer]
        OnCalendar=*-*-* {{ "%02d:%02d:00" | format(backups.hour, backups.minute) }}
        Persistent=true

        [Install]
        WantedBy=timers.target

djangoapp-backups-systemd-reloaded:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: djangoapp-backups-service-unit-file-managed
      - file: djangoapp-backups-timer-unit-file-managed

djangoapp-backups-timer-running:
  service.running:
    - name: djangoapp-backup.timer
    - enable: true
    - require:
      - file: djangoapp-backups-script-file-managed
      - module: djangoapp-backups-systemd-reloaded
      - file: djangoapp-backups-apps-file-serialized
    - watch:
      - file: djangoapp-backups-timer-unit-file-managed
{%- else %}

include:
  - .off.backups
{%- endif %}
