"""Optional integrations (Flask, Django, ...), each imported only by the app that uses it.

``import mongo_job_queue`` imports none of them, so neither Flask nor Django
is ever needed at runtime by an app that does not use them.
"""
