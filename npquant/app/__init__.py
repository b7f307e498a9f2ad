"""The ``npquant`` command line (:mod:`~npquant.app.cli`) and what it runs: the demo
(:mod:`~npquant.app.demo`), the plots (:mod:`~npquant.app.plot`) and reading model files
given on the command line. Library code does not import this package."""
