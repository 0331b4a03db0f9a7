# The stack of the shared integration test host (test/integration/stack.py) and of
# kitchen, merged over demo.sls: PostgreSQL, Redis, Supervisor and self-signed TLS.
---
djangoapp:
  apps:
    demo:
      process_manager: supervisor
      cache:
        engine: redis
      tls:
        mode: selfsigned
