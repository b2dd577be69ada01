"""Scene archives: which pairs (:mod:`.pairs`), what is already done (:mod:`.skip`), what a run reports (:mod:`.report`).

Plain functions; the Prefect flow :func:`flows.archive.process_archive` orders them.
"""
