"""The store: SQLAlchemy ORM tables, engine setup, read-only access and SQL views."""
