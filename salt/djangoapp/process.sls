{#- The process manager that keeps each app's Gunicorn running: Supervisor (default) or
    systemd, per app. Started after the first release exists. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set supervisor = djangoapp.supervisor %}
{%- set supervised_apps = djangoapp.apps.values()
      | selectattr("process_manager", "equalto", "supervisor") | list %}

include:
  - .packages
  - .release

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
    - require:
      - pkg: djangoapp-supervisor-package-installed

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
    - require:
{%-   if app.process_manager == "supervisor" %}
      - cmd: djangoapp-{{ name }}-gunicorn-running
{%-   else %}
      - service: djangoapp-{{ name }}-gunicorn-running
{%-   endif %}
{%- endfor %}
