"""Every claim's verdict, in one place: the words, the claims, and how verdicts reach the scoreboard.

A verdict is decided by a rule fixed before the data is seen. Each rule lives in this package
as a function of the measured numbers, with its thresholds as named constants; a chapter
formats its prose from the same constants and writes the verdict, with the numbers behind it,
to the results store (:func:`record_verdict`). The scoreboard chapter reads the verdicts of
the current build back (:func:`load_verdicts`) and never recomputes them: a claim whose
verdict is missing, or was written by an earlier build, shows as :data:`NOT_RUN`.

The rules are split by claim: claim 2 in :mod:`~hessian_lib.verdicts.theory`, claims 1 and 3 in
:mod:`~hessian_lib.verdicts.shift`, claim 6 in :mod:`~hessian_lib.verdicts.learner`, claims 4, 5 and 7 in
:mod:`~hessian_lib.verdicts.scaling`, claim 8 in :mod:`~hessian_lib.verdicts.mixture`; the verdict words and their
combination are in :mod:`~hessian_lib.verdicts._words`, the claims, the store and the scoreboard in
:mod:`~hessian_lib.verdicts.store`. Every name is available here (``from hessian_lib import verdicts as V``;
``V.claim6_verdict``, ``V.SHIFT_SIGMAS``).

>>> v = Verdict(claim=2, verdict=HOLDS, summary="outliers within 1.6%", numbers={"max_error": 0.016},
...             scale="P = 800", evidence="01_theory.html#the-bbp-transition")
>>> v.verdict in VERDICT_WORDS
True
"""

from hessian_lib.verdicts._words import (
    DOES_NOT_HOLD,
    HOLDS,
    INCONCLUSIVE,
    NO_CHAPTER,
    NOT_RUN,
    PARTLY,
    VERDICT_WORDS,
    agreement,
    combine_parts,
    weakest,
)
from hessian_lib.verdicts._words import _ends as _ends
from hessian_lib.verdicts._words import _missing as _missing
from hessian_lib.verdicts.learner import (
    CLAIM6_FLOOR_PP,
    CLAIM6_GAP_PP,
    CLAIM6_LEVEL,
    claim6_verdict,
    paired_interval,
    stable_lr_range,
    t_quantile,
)
from hessian_lib.verdicts.mixture import (
    AGREE,
    CLAIM8_BULK_TOLERANCE,
    CLAIM8_BULK_WINDOW,
    CLAIM8_COUNT_TOLERANCE,
    CLAIM8_GAP_RATIO,
    CLAIM8_LEVEL,
    CLAIM8_MEASURES,
    CLAIM8_OVERLAP_TOLERANCE,
    CLAIM8_RESIDUAL,
    CLAIM8_SEARCH_FACTOR,
    DIFFER,
    OutlierCount,
    bulk_fraction,
    claim8_count_agreement,
    claim8_equivalence,
    claim8_overlap_agreement,
    claim8_shift_agreement,
    claim8_verdict,
    count_tolerance,
    outlier_count,
    side_count,
)
from hessian_lib.verdicts.mixture import _median as _median
from hessian_lib.verdicts.scaling import (
    CLAIM4_ALTERNATIVE,
    CLAIM4_SLOPE,
    CLAIM4_SMALL_BATCHES,
    CLAIM5_ALTERNATIVE,
    CLAIM5_NULL,
    CLAIM5_SLOPE,
    CLAIM7_FLAT,
    CLAIM7_HORIZON_FACTOR,
    CLAIM7_NULL,
    PARITY_POINTS,
    SCALING_LEVEL,
    claim4_conditions,
    claim4_verdict,
    claim5_verdict,
    claim7_verdict,
    interval_above,
    interval_contains,
    interval_within,
    parity_holds,
)
from hessian_lib.verdicts.shift import (
    EDGE_GAMMA,
    GAMMA_CONFIDENCE,
    OUTLIER_GAMMA,
    SHIFT_SIGMAS,
    UNRESOLVED_FRACTION,
    ShiftEvidence,
    shift_checkpoint_verdict,
    shift_claim_verdict,
    shift_end_verdict,
)
from hessian_lib.verdicts.store import (
    CLAIM_CHAPTERS,
    CLAIMS,
    ScoreboardRow,
    Verdict,
    load_verdicts,
    record_verdict,
    scoreboard,
    verdict_config,
)
from hessian_lib.verdicts.store import _chapter_link as _chapter_link
from hessian_lib.verdicts.store import _plain as _plain
from hessian_lib.verdicts.theory import (
    CLAIM2_TOLERANCE,
    CLAIM2_WINDOW,
    claim2_verdict,
    formula_reproduced,
    in_threshold_window,
)

# The private helpers imported above under their own names (_ends, _missing, _plain, _chapter_link, _median)
# are not part of the interface; they stay reachable as attributes, as they were when this was one module.
__all__ = [
    "AGREE",
    "CLAIM2_TOLERANCE",
    "CLAIM2_WINDOW",
    "CLAIM4_ALTERNATIVE",
    "CLAIM4_SLOPE",
    "CLAIM4_SMALL_BATCHES",
    "CLAIM5_ALTERNATIVE",
    "CLAIM5_NULL",
    "CLAIM5_SLOPE",
    "CLAIM6_GAP_PP",
    "CLAIM6_FLOOR_PP",
    "CLAIM6_LEVEL",
    "CLAIM7_FLAT",
    "CLAIM7_HORIZON_FACTOR",
    "CLAIM7_NULL",
    "CLAIM8_BULK_TOLERANCE",
    "CLAIM8_BULK_WINDOW",
    "CLAIM8_COUNT_TOLERANCE",
    "CLAIM8_GAP_RATIO",
    "CLAIM8_LEVEL",
    "CLAIM8_MEASURES",
    "CLAIM8_OVERLAP_TOLERANCE",
    "CLAIM8_RESIDUAL",
    "CLAIM8_SEARCH_FACTOR",
    "CLAIMS",
    "CLAIM_CHAPTERS",
    "DIFFER",
    "DOES_NOT_HOLD",
    "EDGE_GAMMA",
    "GAMMA_CONFIDENCE",
    "HOLDS",
    "INCONCLUSIVE",
    "NOT_RUN",
    "NO_CHAPTER",
    "OUTLIER_GAMMA",
    "PARITY_POINTS",
    "PARTLY",
    "SCALING_LEVEL",
    "SHIFT_SIGMAS",
    "UNRESOLVED_FRACTION",
    "VERDICT_WORDS",
    "OutlierCount",
    "ScoreboardRow",
    "ShiftEvidence",
    "Verdict",
    "agreement",
    "bulk_fraction",
    "claim2_verdict",
    "claim4_conditions",
    "claim4_verdict",
    "claim5_verdict",
    "claim6_verdict",
    "claim7_verdict",
    "claim8_count_agreement",
    "claim8_equivalence",
    "claim8_overlap_agreement",
    "claim8_shift_agreement",
    "claim8_verdict",
    "combine_parts",
    "count_tolerance",
    "formula_reproduced",
    "in_threshold_window",
    "interval_above",
    "interval_contains",
    "interval_within",
    "load_verdicts",
    "outlier_count",
    "paired_interval",
    "parity_holds",
    "record_verdict",
    "scoreboard",
    "shift_checkpoint_verdict",
    "shift_claim_verdict",
    "shift_end_verdict",
    "side_count",
    "stable_lr_range",
    "t_quantile",
    "verdict_config",
    "weakest",
]
