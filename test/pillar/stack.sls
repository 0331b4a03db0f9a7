# The stack of the shared integration test host (test/integration/stack.py) and of
# kitchen, merged over demo.sls: PostgreSQL, Redis, Supervisor and self-signed TLS,
# with the demo's production settings (`manage.py check --deploy` finds nothing).
---
djangoapp:
  apps:
    demo:
      process_manager: supervisor
      cache:
        engine: redis
      tls:
        mode: selfsigned
      env:
        DJANGO_SECURE_SSL_REDIRECT: "1"
        DJANGO_SESSION_COOKIE_SECURE: "1"
        DJANGO_CSRF_COOKIE_SECURE: "1"
        DJANGO_SECURE_HSTS_SECONDS: "31536000"
