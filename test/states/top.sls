# The demo's top file: this formula's state tree ships none (a master that serves
# it has its own). The integration tests' master lists this directory before salt/
# in its file_roots; test/try and the Saltfile apply the formula by name.
---
base:
  '*':
    - djangoapp
