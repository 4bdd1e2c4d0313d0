"""The voter: joins the k specialists' predictions per record and decides each record once.

:mod:`.routing` holds the pure decision functions (the paper's ``vote`` and calibrated
``soft``), :mod:`.join` the per-partition pending state, :mod:`.service` the :class:`Voter`
processor run by the shared loop, and :mod:`.calibrate` the fitting of temperatures and ``tau``.
"""
