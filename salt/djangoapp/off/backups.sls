{#- Nightly dumps switched off (`djangoapp:backups:enabled: false`, clean.sls, and
    a minion whose dumps cover no app, as a web minion of a fleet): the timer
    stopped and disabled (a dump already running finishes), its units, the dump
    script and its apps file removed, systemd reloaded. The dumps themselves are
    kept, under the backup root, as are the ones taken before migrations and by
    hand. Nothing to do on a host that never had it. #}
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import djangoapp with context %}
{%- set timer = "/etc/systemd/system/djangoapp-backup.timer" %}
{%- set service = "/etc/systemd/system/djangoapp-backup.service" %}

djangoapp-backups-timer-dead:
  service.dead:
    - name: djangoapp-backup.timer
    - enable: false
    # The unit is ours: nothing to stop without it (test mode included).
    - onlyif: test -e {{ timer }}

{%- for path in [
      timer,
      service,
      djangoapp.paths.lib_dir ~ "/backup-databases",
      djangoapp.paths.config_root ~ "/backups.json",
    ] %}

djangoapp-backups-file-absent-{{ path }}:
  file.absent:
    - name: {{ path }}
    - require:
      - service: djangoapp-backups-timer-dead
{%- endfor %}

djangoapp-backups-systemd-reloaded:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: djangoapp-backups-file-absent-{{ timer }}
      - file: djangoapp-backups-file-absent-{{ service }}
