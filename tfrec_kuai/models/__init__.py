"""The ranking and retrieval models (docs/design.md §5)."""
from tfrec_kuai.models.metrics import BatchRecallAtK
from tfrec_kuai.models.ranking import OUTPUT_NAMES, RankingModel
from tfrec_kuai.models.retrieval import CandidateTower, QueryTower, RetrievalModel

__all__ = ["BatchRecallAtK", "OUTPUT_NAMES", "RankingModel", "CandidateTower", "QueryTower", "RetrievalModel"]
