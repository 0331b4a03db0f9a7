{#- uv, in a virtualenv of its own, builds each release's virtualenv; beside it,
    django-migration-linter for the releases' preflight (djangoapp_migration_policy),
    pure Python that each release's own interpreter imports. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- if "web" in djangoapp.fleet.roles %}
{%- set tools_dir = djangoapp.paths.tools_dir %}
{%- set uv_requirement = "uv==" ~ djangoapp.tools.uv_version %}
{%- set linter_dir = tools_dir ~ "/migration-linter" %}
{%- set linter_version = djangoapp.tools.migration_linter[0].split("==")[1] %}

include:
  - .packages

djangoapp-tools-virtualenv-created:
  cmd.run:
    - name: {{ djangoapp.tools.python }} -m venv {{ tools_dir }}
    - creates: {{ tools_dir }}/bin/python
    - require:
      - pkg: djangoapp-base-packages-installed

djangoapp-tools-uv-installed:
  cmd.run:
    - name: {{ tools_dir }}/bin/python -m pip install --quiet {{ uv_requirement }}
    # `uv --version` answers in milliseconds; `pip show` takes half a second.
    - unless: >-
        {{ tools_dir }}/bin/uv --version | cut -d " " -f 2
        | grep -qxF {{ djangoapp.tools.uv_version | string | quote }}
    - env: {{ djangoapp.proxy_env | json }}
    - require:
      - cmd: djangoapp-tools-virtualenv-created

djangoapp-tools-uv-cache-directory:
  file.directory:
    - name: {{ djangoapp.paths.uv_cache }}
    - mode: "0700"
    - makedirs: true

djangoapp-tools-migration-linter-installed:
  cmd.run:
    - name: >-
        {{ tools_dir }}/bin/python -m pip install --quiet --no-deps --upgrade
        --target {{ linter_dir }} {{ djangoapp.tools.migration_linter | map("quote") | join(" ") }}
    - unless: test -d {{ linter_dir }}/django_migration_linter-{{ linter_version }}.dist-info
    - env: {{ djangoapp.proxy_env | json }}
    - require:
      - cmd: djangoapp-tools-virtualenv-created
{%- endif %}
