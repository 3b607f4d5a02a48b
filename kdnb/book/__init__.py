"""The textbook's layer: what the chapters train (one registry, :mod:`kdnb.book.settings`), the
chapters' shared experiments, their figures, widgets and claims, named runs and their reports, and
the ``kdnb`` command. It builds on the library (``kdnb``), which never imports it."""
