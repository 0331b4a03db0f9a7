{#- Per app: system user, directories, the engine's config, the secret environment, the
    Gunicorn config and the manage command. The release itself is in release.sls. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set paths = djangoapp.paths %}

include:
  - .packages

djangoapp-envrun-file-managed:
  file.managed:
    - name: {{ paths.lib_dir }}/envrun
    - source: salt://{{ tpldir }}/files/envrun.py
    - makedirs: true
    - mode: "0755"

djangoapp-database-module-file-managed:
  file.managed:
    - name: {{ paths.lib_dir }}/djangoapp_database.py
    - source: salt://{{ tpldir }}/files/djangoapp_database.py
    - makedirs: true
    - mode: "0644"

{%- for path, mode in [
      (paths.base_root, "0755"),
      (paths.config_root, "0755"),
      (paths.run_root, "0755"),
      (paths.log_root, "0755"),
      (paths.backup_root, "0700"),
    ] %}

djangoapp-directory-{{ path }}:
  file.directory:
    - name: {{ path }}
    - user: root
    - group: root
    - mode: "{{ mode }}"
    - makedirs: true
{%- endfor %}

{%- for name, app in djangoapp.apps.items() %}

djangoapp-{{ name }}-group-present:
  group.present:
    - name: {{ app.group }}
    - system: true

djangoapp-{{ name }}-user-present:
  user.present:
    - name: {{ app.user }}
    - gid: {{ app.group }}
    - home: {{ app.base_dir }}
    - createhome: false
    - shell: {{ djangoapp.nologin_shell }}
    - system: true
    - require:
      - group: djangoapp-{{ name }}-group-present

{%-   for path, owner, group, mode in [
        (app.base_dir, "root", "root", "0755"),
        (app.base_dir ~ "/releases", "root", "root", "0755"),
        (app.base_dir ~ "/shared", "root", "root", "0755"),
        (app.media_dir, app.user, app.group, "0755"),
        (app.config_dir, "root", app.group, "0750"),
        (app.log_dir, app.user, app.group, "0750"),
        (app.backup_dir, "root", "root", "0700"),
        (app.run_dir, app.user, djangoapp.nginx.group, "0750"),
      ] %}

djangoapp-{{ name }}-directory-{{ path }}:
  file.directory:
    - name: {{ path }}
    - user: {{ owner }}
    - group: {{ group }}
    - mode: "{{ mode }}"
    - makedirs: true
    - require:
      - user: djangoapp-{{ name }}-user-present
      - pkg: djangoapp-base-packages-installed
    - require_in:
      - file: djangoapp-{{ name }}-engine-config-file-serialized
{%-   endfor %}

djangoapp-{{ name }}-runtime-directory-at-boot-file-managed:
  file.managed:
    - name: {{ app.tmpfiles_file }}
    - mode: "0644"
    - contents: |
        d {{ app.run_dir }} 0750 {{ app.user }} {{ djangoapp.nginx.group }} -

djangoapp-{{ name }}-engine-config-file-serialized:
  file.serialize:
    - name: {{ app.engine_config }}
    - mode: "0644"
    - serializer: json
    - serializer_opts:
      - indent: 2
      - sort_keys: true
    # Derived by djangoapp.derive_settings (app_json in _utils/djangoapp_settings.py).
    - dataset: {{ app.app_json | json }}

djangoapp-{{ name }}-environment-file-serialized:
  file.serialize:
    - name: {{ app.env_file }}
    - user: root
    - group: {{ app.group }}
    - mode: "0640"
    - serializer: json
    - show_changes: false
    - dataset: {{ app.environment | json }}
    - require:
      - file: djangoapp-{{ name }}-engine-config-file-serialized

{%-   if app.deploy_key_file %}

djangoapp-{{ name }}-deploy-key-file-managed:
  file.managed:
    - name: {{ app.deploy_key_file }}
    - user: {{ app.user }}
    - group: {{ app.group }}
    - mode: "0600"
    - show_changes: false
    - contents_pillar: djangoapp:apps:{{ name }}:deploy_key
    - require:
      - file: djangoapp-{{ name }}-engine-config-file-serialized
{%-   endif %}

{%-   if app.known_hosts_file %}

djangoapp-{{ name }}-known-hosts-file-managed:
  file.managed:
    - name: {{ app.known_hosts_file }}
    - mode: "0644"
    - contents_pillar: djangoapp:apps:{{ name }}:known_hosts
    - require:
      - file: djangoapp-{{ name }}-engine-config-file-serialized
{%-   endif %}

djangoapp-{{ name }}-gunicorn-config-file-managed:
  file.managed:
    - name: {{ app.gunicorn_config }}
    - source: salt://{{ tpldir }}/files/gunicorn.conf.py.jinja
    - template: jinja
    - mode: "0644"
    - context:
        app: {{ app | json }}
    - require:
      - file: djangoapp-{{ name }}-engine-config-file-serialized

djangoapp-{{ name }}-manage-command-file-managed:
  file.managed:
    - name: {{ app.manage_command }}
    - source: salt://{{ tpldir }}/files/manage.sh.jinja
    - template: jinja
    - mode: "0755"
    - context:
        app: {{ app | json }}
        envrun: {{ (paths.lib_dir ~ "/envrun") | json }}
{%- endfor %}
