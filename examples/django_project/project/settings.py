"""Settings of the example project: no SQL models of its own, jobs in MongoDB."""

from __future__ import annotations

import os

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
USE_TZ = True

INSTALLED_APPS = [
    "shop",  # its jobs.py is found by autodiscovery
    "mongo_job_queue.contrib.django",
    # Users and sessions, for Django's admin login in front of the jobs admin UI (project/urls.py).
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
]
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
# The users' database (SQL); the jobs live in MongoDB. EXAMPLE_SQLITE names a file (migrate it first).
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ.get("EXAMPLE_SQLITE", ":memory:")}}
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

MONGO_JOB_QUEUE = {
    "MODEL": "shop.documents:Job",
    "MONGODB_URI": os.environ.get("MONGODB_URI", "mongodb://localhost:27017"),
    "MONGODB_DB": os.environ.get("MONGODB_DB", "django_example"),
    # Explicit: run a worker in each serving process (never in migrate, shell or tests).
    "AUTOSTART": os.environ.get("MONGO_JOB_QUEUE_AUTOSTART", "1") == "1",
    "REGISTRY_MODULES": ["integrations.jobs_registry"],  # handlers outside any Django app
    "CONFIG": {"concurrency": 4, "retry_delay_ms": 200, "poll_interval_base_ms": 100, "poll_interval_max_ms": 1_000},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "mongo_job_queue": {"handlers": ["console"], "level": "INFO"},
        "shop": {"handlers": ["console"], "level": "INFO"},
    },
}
