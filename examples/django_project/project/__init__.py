"""A Django project that enqueues jobs over HTTP and runs them in its own worker.

Run it from this folder::

    MONGODB_URI=mongodb://localhost:27017 python manage.py runserver

or a dedicated worker beside the web processes::

    MONGO_JOB_QUEUE_AUTOSTART=0 python manage.py runserver
    python manage.py run_job_worker --concurrency 4
"""
