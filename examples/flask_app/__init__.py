"""A Flask app that enqueues jobs over HTTP and runs them in its own worker.

Run it from the repository root::

    MONGODB_URI=mongodb://localhost:27017 flask --app examples.flask_app.app:create_app run

``POST /organizations/<org>/jobs`` with ``{"type": ..., "data": {...}}``
enqueues a job; ``GET /jobs/<id>`` shows its status. A schedule refreshes
exchange rates every hour (``EXCHANGE_RATES_EVERY_MS`` to change it).
"""
