"""The administrator's tooling: the ``neblina-admin`` CLI and what it runs.

Never shipped to Lambda (``scripts/package_lambda.py`` packages ``app.py`` and
``chalicelib/`` only): the admin talks to the same store and bucket as the API, with the
administrator's credentials, through the modules of ``chalicelib`` it imports.

- :mod:`neblina_admin.cli`: the typer commands (``neblina-admin``);
- :mod:`neblina_admin.operations`: what the commands do (users, tokens, datasets, grants);
- :mod:`neblina_admin.declarative`: ``plan``/``apply``/``export`` of a declarative file;
- :mod:`neblina_admin.admintarget`: which store the CLI talks to, and how it says so;
- :mod:`neblina_admin.sourcecheck`: the strict check of a dataset's source at registration.
"""
