{#- The process manager that keeps each app's Gunicorn running: Supervisor (default) or
    systemd, per app. Started after the first release exists. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set supervisor = djangoapp.supervisor %}
{%- set keeper = djangoapp.paths.lib_dir ~ "/gunicorn-keeper" %}
{%- set supervised_apps = djangoapp.apps.values()
      | selectattr("process_manager", "equalto", "supervisor") | list %}

include:
  - .packages
  - .release

djangoapp-gunicorn-keeper-file-managed:
  file.managed:
    - name: {{ keeper }}
    - source: salt://{{ tpldir }}/files/gunicorn-keeper.py
    - makedirs: true
    - mode: "0755"

{%- if supervised_apps %}

djangoapp-supervisor-package-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.supervisor | json }}
    - require:
      - pkg: djangoapp-base-packages-installed

djangoapp-supervisor-service-running:
  service.running:
    - name: {{ supervisor.service }}
    - enable: true
    - require:
      - pkg: djangoapp-supervisor-package-installed
{%- endif %}

{%- for name, app in djangoapp.apps.items() %}
{%-   set python = app.base_dir ~ "/current/venv/bin/python" %}
{%-   set gunicorn_arguments = ["--config", app.gunicorn_config, app.app_path] %}
{#-   With preload_app, gunicorn-keeper starts a Gunicorn master per hand-over:
      RELEASE_LINK RUN_DIR TIMEOUT -- GUNICORN_ARGUMENTS #}
{%-   if app.preload_app %}
{%-     set command = [python, keeper, app.base_dir ~ "/current", app.run_dir,
                       app.graceful_timeout + 15, "--"] + gunicorn_arguments %}
{%-   else %}
{%-     set command = [python, "-m", "gunicorn"] + gunicorn_arguments %}
{%-   endif %}
{%-   if app.process_manager == "supervisor" %}

djangoapp-{{ name }}-supervisor-program-file-managed:
  file.managed:
    - name: {{ supervisor.conf_dir }}/{{ app.service }}.{{ supervisor.conf_ext }}
    - source: salt://{{ tpldir }}/files/supervisor-program.conf.jinja
    - template: jinja
    - mode: "0644"
    - context:
        app: {{ app | json }}
        web_group: {{ djangoapp.nginx.group | json }}
        command: {{ command | join(" ") | json }}
    - require:
      - pkg: djangoapp-supervisor-package-installed
      - file: djangoapp-gunicorn-keeper-file-managed

djangoapp-{{ name }}-supervisor-program-updated:
  cmd.run:
    # Adds the program, or restarts it with its changed definition.
    - name: supervisorctl update {{ app.service }}
    - onchanges:
      - file: djangoapp-{{ name }}-supervisor-program-file-managed
    - require:
      - service: djangoapp-supervisor-service-running
      - djangoapp: djangoapp-{{ name }}-release-deployed

djangoapp-{{ name }}-gunicorn-running:
  cmd.run:
    - name: supervisorctl start {{ app.service }}
    # The Gunicorn pidfile naming a live process started with this app's config
    # answers in milliseconds; supervisorctl, a Python client, takes up to a second.
    - unless: >-
        grep -qF -- {{ app.gunicorn_config | quote }}
        "/proc/$(cat {{ (app.run_dir ~ "/gunicorn.pid") | quote }})/cmdline"
        || supervisorctl status {{ app.service }} | grep -q RUNNING
    - require:
      - cmd: djangoapp-{{ name }}-supervisor-program-updated
{%-   else %}

djangoapp-{{ name }}-systemd-unit-file-managed:
  file.managed:
    - name: /etc/systemd/system/{{ app.service }}.service
    - source: salt://{{ tpldir }}/files/systemd.service.jinja
    - template: jinja
    - mode: "0644"
    - context:
        app: {{ app | json }}
        command: {{ command | join(" ") | json }}
    - require:
      - file: djangoapp-gunicorn-keeper-file-managed

djangoapp-{{ name }}-systemd-socket-file-managed:
  file.managed:
    - name: /etc/systemd/system/{{ app.service }}.socket
    - source: salt://{{ tpldir }}/files/systemd.socket.jinja
    - template: jinja
    - mode: "0644"
    - context:
        app: {{ app | json }}
        web_group: {{ djangoapp.nginx.group | json }}

djangoapp-{{ name }}-gunicorn-socket-taken-over:
  cmd.run:
    # systemd refuses to start a socket unit whose service already runs without
    # it: the service stops (gracefully) first, then starts again on the socket,
    # at once (requests fail only while no socket is there).
    - name: >-
        systemctl daemon-reload
        && systemctl stop {{ (app.service ~ ".service") | quote }}
        && systemctl restart {{ (app.service ~ ".socket") | quote }}
        && systemctl start {{ (app.service ~ ".service") | quote }}
    - onchanges:
      - file: djangoapp-{{ name }}-systemd-socket-file-managed
    - require:
      - djangoapp: djangoapp-{{ name }}-release-deployed
      - file: djangoapp-{{ name }}-systemd-unit-file-managed

djangoapp-{{ name }}-gunicorn-socket-listening:
  service.running:
    - name: {{ app.service }}.socket
    - enable: true
    - require:
      - cmd: djangoapp-{{ name }}-gunicorn-socket-taken-over

djangoapp-{{ name }}-gunicorn-running:
  service.running:
    - name: {{ app.service }}
    - enable: true
    - require:
      - djangoapp: djangoapp-{{ name }}-release-deployed
      - service: djangoapp-{{ name }}-gunicorn-socket-listening
    - watch:
      - file: djangoapp-{{ name }}-systemd-unit-file-managed
{%-   endif %}

djangoapp-{{ name }}-gunicorn-reloaded:
  module.run:
    - djangoapp.reload:
      - app: {{ name }}
    - onchanges:
      - file: djangoapp-{{ name }}-gunicorn-config-file-managed
      - file: djangoapp-{{ name }}-environment-file-serialized
{%-   if app.preload_app %}
      {#- a newer gunicorn-keeper: the reload has the running one execute it #}
      - file: djangoapp-gunicorn-keeper-file-managed
{%-   endif %}
    - require:
{%-   if app.process_manager == "supervisor" %}
      - cmd: djangoapp-{{ name }}-gunicorn-running
{%-   else %}
      - service: djangoapp-{{ name }}-gunicorn-running
{%-   endif %}
{%- endfor %}
