"""Typed, frozen, versioned configuration of one llmquant quantization run.

A config is a tree of frozen dataclasses; YAML files under ``configs/`` map onto it key by
key (see :mod:`llmquant.config.load`).  Every field has a default, so a YAML file only
states what differs.  ``version`` is the schema version: a file written for another
version is refused instead of being read differently.

Seeds live in the config (``model.seed`` for tiny random models, ``rotation.seed``,
``calibration.seed``), so a run is reproducible from its saved config alone.

What gets quantized: every ``nn.Linear`` inside the decoder layers (the adapter's roles).
Embeddings, the final norm and ``lm_head`` stay in floating point (embeddings and ``lm_head`` optionally stored
in float16 / bfloat16: ``model.embed_dtype``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Schema version understood by this code.
SCHEMA_VERSION = 1

DTYPES = ("float32", "float16", "bfloat16")
WEIGHT_METHODS = ("none", "scalar", "lattice")
WEIGHT_ALGORITHMS = ("rtn", "gptq")
DYNAMIC_METHODS = ("none", "scalar", "lattice")
LATTICES = ("E8",)
CHOOSE_RULES = ("min_error", "first_fit")
#: weight codes of ``weights.method: lattice``: the NestQuant Voronoi code (q, k) or the deployable box code
WEIGHT_CODES = ("voronoi", "box")
#: shipped box-code settings (``llmquant/lattice/data/box_beta_sets.json``; :func:`llmquant.lattice.box.load_box_setting`)
BOX_VARIANTS = ("lattice", "best", "int", "int8", "table", "d8int8", "beta_tables")
METHOD_LABELS = ("fp", "rtn", "quarot", "e8", "custom")
#: forward backends of LatticeLinear and the online Hadamard rotations (see ``ModelConfig.backend``)
BACKENDS = ("reference", "triton", "native", "auto")
#: what the reference forward of the quantized linears keeps between calls (see ``ModelConfig.weight_cache``)
WEIGHT_CACHE_MODES = ("none", "decoded")


@dataclass(frozen=True)
class ModelConfig:
    """Which model to load: ``smollm2-135m`` (embedded), an HF hub id, a local dir, a ``.gguf``
    file, or ``tiny-random-<arch>`` (in-code random model, built from ``seed``)."""

    spec: str = "smollm2-135m"
    dtype: str = "float32"
    #: ``auto`` = CUDA when present, else CPU.
    device: str = "auto"
    seed: int = 0
    #: forward backend of the quantized linears and online Hadamards of the loaded model:
    #: ``reference`` (PyTorch, the spec), ``triton`` (kernels; on CPU only under ``TRITON_INTERPRET=1``),
    #: ``native`` (compiled C decode-GEMV on CPU for box-coded layers at decode sizes, built at first use),
    #: ``auto`` (the Triton kernels on CUDA when triton is installed, the native GEMV on CPU, else the
    #: reference).  Calibration always runs the reference; the backend is set once the model is quantized or loaded.  Not part of the
    #: config hash (it does not change the quantized model).
    backend: str = "auto"
    #: layer-wise offload during quantization: the model stays in CPU memory and each decoder layer
    #: (and, for the input capture, the embeddings) is moved to ``device`` only while it is calibrated
    #: and quantized, so peak accelerator memory is one layer plus its activations.  Results are those
    #: of ``offload: false``.  Not part of the config hash.
    offload: bool = False
    #: reference forward of ``LatticeLinear``/``ScalarLinear``: ``none`` = weights stay packed, each forward
    #: decodes them tile by tile into a shared work buffer (no dense copy per layer); ``decoded`` = each
    #: layer keeps its decoded weight (in the input's dtype) for speed, at the memory of a dense model.
    #: Same outputs either way.  Not part of the config hash.
    weight_cache: str = "none"
    #: storage dtype of the input embeddings and ``lm_head`` (one tensor when tied): ``float32`` | ``float16`` |
    #: ``bfloat16``, or null = ``dtype`` (what every checkpoint stored before this key existed).  They still
    #: compute in ``dtype`` from the stored values (:mod:`llmquant.models.embed_dtype`); when set, ``bits``
    #: reports ``embeddings`` (their stored bits per entry).  Part of the config hash unless null or ``dtype``.
    embed_dtype: str | None = None


@dataclass(frozen=True)
class RotationConfig:
    """Hadamard rotations (QuaRot-style): residual stream rotated offline, ``down_proj`` input
    rotated online, per-head rotation of V/O offline, Q/K rotated online after RoPE."""

    enabled: bool = False
    #: seed of the random-sign Hadamard rotations (residual: seed, down: seed+1, V/O: seed+2, Q/K: seed+3)
    seed: int = 0
    #: online Hadamard on the ``down_proj`` input (InputRotatedLinear)
    online_down: bool = True
    #: per-head Hadamard fused into V and O offline
    v_o: bool = True
    #: online Hadamard on queries and keys after RoPE (required for KV quantization)
    qk: bool = True
    #: ``fold``: norm gains folded into the next linears, residual stream rotated offline (QuaRot);
    #: ``online``: gains stay in the norms and each pre-norm output is rotated online (two Hadamards per layer);
    #: for models whose norm gains span a large range (see :mod:`llmquant.models.rotate`, "Norm gains")
    norm_gains: str = "fold"


@dataclass(frozen=True)
class CalibrationConfig:
    """``n_samples`` seeded random windows of ``seq_len`` tokens from the train split."""

    dataset: str = "wikitext2"
    n_samples: int = 64
    seq_len: int = 512
    seed: int = 0
    data_dir: str | None = None
    #: sequences per forward pass in the layer-wise runner (memory vs speed)
    batch_size: int = 8


@dataclass(frozen=True)
class WeightConfig:
    """Weight quantization of every decoder-layer linear.

    ``scalar``: INT-``bits`` per output channel (``group_size == 0``) or per group of
    ``group_size`` input columns; asymmetric (scale + zero) unless ``symmetric``.
    ``lattice``: rows split into 8-vectors along the input dim, per-row RMS scale (fp16),
    nested lattice ``lattice`` with Voronoi modulus ``q`` and ``k`` betas (one beta index per
    8-vector).  ``algorithm``: ``rtn`` (nearest point) or ``gptq`` (error feedback through the
    inverse-Hessian Cholesky factor; for the lattice it works on 8-column blocks = LDLQ).
    """

    method: str = "none"
    algorithm: str = "gptq"
    bits: int = 4
    group_size: int = 0
    symmetric: bool = False
    #: RTN only: search a shrink ratio of the range per row/group minimizing the squared error
    clip_search: bool = True
    lattice: str = "E8"
    q: int = 14
    k: int = 2
    #: beta choice per 8-vector: "min_error" (least squared error) or "first_fit" (smallest beta without overload)
    choose: str = "min_error"
    #: GPTQ damping: ``percdamp * mean(diag(H))`` added to the diagonal
    percdamp: float = 0.01
    #: process columns by decreasing ``diag(H)`` (scalar only; lattice blocks must stay contiguous)
    act_order: bool = False
    #: lazy-batch width of GPTQ (columns), a multiple of 8
    block_size: int = 128
    #: with ``algorithm: gptq``: each quantized linear gets a bias ``b + (W - Q) mu`` (``mu`` = mean calibration
    #: input) and GPTQ/LDLQ minimize the error on the centred inputs (covariance instead of second moment).
    #: Costs one float32 per output row (counted in the bits); see :func:`llmquant.quant.weights.quantize_linear`.
    bias_correction: bool = True
    #: lattice only: ``voronoi`` (E8 Voronoi code with modulus ``q`` and ``k`` betas, the NestQuant scheme) or
    #: ``box`` (:class:`llmquant.lattice.box.BoxCodec`: one (8 ``box_bits`` + 8)-bit word per 8-vector, stored
    #: bits = counted bits; ``q``/``k``/``lattice``/``choose`` are not used)
    code: str = "voronoi"
    #: box code width ``b`` (1, 2, 3): ``b + 1`` stored bits per weight (+ fp16 row scale)
    box_bits: int = 3
    #: shipped box setting (:func:`llmquant.lattice.box.load_box_setting`): lattice | best | int | int8 | table
    box_variant: str = "table"


@dataclass(frozen=True)
class DynamicQuantConfig:
    """Dynamic (runtime) quantization of activations or of the KV cache.

    Activations: each linear's input, per token (after its online rotation).  KV: keys after
    RoPE + Hadamard and values, per token and per head.  ``scalar``: INT-``bits``, asymmetric
    min/max unless ``symmetric``; the range is multiplied by ``clip_ratio``.  ``lattice``:
    per-token RMS scale, then the nested lattice with modulus ``q`` and ``k`` betas.
    """

    method: str = "none"
    bits: int = 4
    symmetric: bool = False
    clip_ratio: float = 1.0
    lattice: str = "E8"
    q: int = 14
    k: int = 2
    choose: str = "min_error"
    #: ``method: lattice`` only: ``voronoi`` (the nested E8 Voronoi code above) or ``box``
    #: (:class:`llmquant.lattice.box.BoxCodec` per row: one (8 ``box_bits`` + 8)-bit word per 8-vector + an fp16
    #: row scale, stored bits = counted bits; ``q``/``k``/``lattice``/``choose`` are not used)
    code: str = "voronoi"
    #: box code width ``b`` (1, 2, 3): ``b + 1`` bits per entry (+ fp16 row scale)
    box_bits: int = 3
    #: shipped box setting (:func:`llmquant.lattice.box.load_box_setting`); ``int``: integer β ratios, what the
    #: W4A4 box kernel (``kernels/box_w4a4.py``) needs
    box_variant: str = "int"


@dataclass(frozen=True)
class EvalConfig:
    """Perplexity protocol: non-overlapping windows of ``context`` tokens of the test split
    (C4: validation); ``max_tokens`` caps the number of evaluated tokens (None = all)."""

    ppl: tuple[str, ...] = ("wikitext2",)
    context: int = 2048
    max_tokens: int | None = None
    data_dir: str | None = None


@dataclass(frozen=True)
class GuardConfig:
    """Per-layer guard during quantization (see :mod:`llmquant.quant.guard`): a layer whose output error
    exceeds ``max_rel_err`` (or ``ratio`` x the median of the earlier layers, after ``min_history`` layers),
    or a linear whose Hessian-weighted error exceeds ``max_linear_rel_err`` (same ratio rule per role), is
    reported during the run with its likely cause and recorded in ``results.json`` (``warnings``).  It
    never changes the quantized model (not part of the config hash)."""

    enabled: bool = True
    max_rel_err: float = 0.1
    max_linear_rel_err: float = 0.3
    ratio: float = 4.0
    min_history: int = 2


@dataclass(frozen=True)
class Config:
    """One run: model, rotation, calibration, weight/activation/KV quantizers, evaluation."""

    version: int = SCHEMA_VERSION
    name: str = "unnamed"
    #: label for tables: fp | rtn | quarot | e8 | custom (does not change behaviour)
    method: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    rotation: RotationConfig = field(default_factory=RotationConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    weights: WeightConfig = field(default_factory=WeightConfig)
    activations: DynamicQuantConfig = field(default_factory=DynamicQuantConfig)
    kv: DynamicQuantConfig = field(default_factory=DynamicQuantConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)

    @property
    def quantizes_anything(self) -> bool:
        return self.weights.method != "none" or self.activations.method != "none" or self.kv.method != "none"
