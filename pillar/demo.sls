# The demo app (test/demoapp), published as a git repository with tags by
# test/demorepo.py. Any Django project is deployed the same way: see pillar.example.
---
djangoapp:
  apps:
    demo:
      repo: file:///srv/git/demo.git
      version: v1.0.0
      settings_module: demosite.settings
      wsgi: demosite.wsgi:application
      requirements: requirements.txt
      server_names: [demo.test]
      health_path: /healthz/
      env:
        DJANGO_SECRET_KEY: demo-secret-key-change-me-0123456789-abcdefghijklmnopqrstuvwxyz
      database:
        engine: postgresql
        password: demo-database-password
