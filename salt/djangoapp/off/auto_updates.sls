{#- Automatic updates switched off (`djangoapp:auto_updates:enabled: false`, and
    clean.sls), where the formula had turned them on: the timers that install
    updates (`upgrade_timers`: apt-daily-upgrade on Debian, where the package's own
    20auto-upgrades would go on installing them, dnf-automatic on RedHat) stopped
    and disabled, and our apt configuration (Debian) or our record (RedHat) removed.
    apt-daily.timer, which only refreshes the package lists, keeps running; the
    options set in dnf's automatic.conf stay, unused. A host whose updates the
    formula never turned on is left alone. The packages stay installed. #}
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import djangoapp with context %}
{%- set updates = djangoapp.auto_updates %}
{%- if updates.backend == "unattended-upgrades" %}
{%-   set record = updates.apt_config_file %}
{%- else %}
{%-   set record = djangoapp.paths.config_root ~ "/dnf-automatic-managed" %}
{%- endif %}
{%- for timer in updates.upgrade_timers %}

djangoapp-auto-updates-{{ timer }}-dead:
  service.dead:
    - name: {{ timer }}
    - enable: false
    - onlyif: test -e {{ record }}
    - require_in:
      - file: djangoapp-auto-updates-record-file-absent
{%- endfor %}

djangoapp-auto-updates-record-file-absent:
  file.absent:
    - name: {{ record }}
