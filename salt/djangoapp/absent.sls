{#- The apps the pillar marks `absent: true`, taken down (takedown.jinja) while the
    others go on serving; with `purge: true` their database, users and files go too. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- from tpldir ~ "/takedown.jinja" import take_down with context %}

{%- if djangoapp.absent_apps %}

include:
  - .nginx
{%-   for app in djangoapp.absent_apps.values() %}
{{ take_down(djangoapp, app, app.purge, reload_nginx=true) }}
{%-   endfor %}
{%- endif %}
