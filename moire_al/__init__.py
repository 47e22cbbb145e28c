"""moire-al: hyperactive learning of ACE potentials for twisted 2D multilayers.

Science lives in plain importable modules (``structures``, ``models``,
``labelling``, ``analysis``); ``workflows`` wraps them as FireWorks Firetasks and
``store`` keeps configurations, labels, models and rounds in MongoDB.
"""

__version__ = "0.1.0"
