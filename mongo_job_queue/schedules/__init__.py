"""Recurring jobs: cron expressions and fixed intervals, fired once per fire time across processes.

* :mod:`.definition`: :class:`~.definition.Schedule` and :class:`~.definition.CatchUp`, data
  validated once, which say which fire times are due;
* :mod:`.fire_times`: the fire times of a cron expression (DST as Debian
  cron) or an interval, in naive UTC;
* :mod:`.service`: the :class:`~.service.Scheduler` that a worker thread
  runs, one :meth:`~.service.Scheduler.step` at a time;
* :mod:`.manager`: what :class:`~mongo_job_queue.PersistentJobQueue`'s
  schedule methods do, and :class:`~.manager.ScheduleInfo`.

The public names are exported from :mod:`mongo_job_queue` itself.
"""
