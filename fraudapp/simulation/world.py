"""The simulated world: who shops where, when, for how much; built once from the seed.

Customers (home, spending, rhythm) and terminals (place, ISO 18245 category, channel mix) in a
country-sized box, plus every knob of the simulation (`SimulationConfig`). The day blocks of
`fraudapp.simulation.traffic` draw transactions from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from scipy.spatial import cKDTree

from fraudapp.transactions import CHANNELS

SCENARIOS: dict[int, str] = {
    0: "legit",
    1: "large_amount",
    2: "compromised_terminal",
    3: "stolen_credentials",
    4: "card_testing",
    5: "account_takeover",
    6: "impossible_travel",
}
HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
STREAM_WORLD, STREAM_DAY, STREAM_SKIMMED, STREAM_STOLEN = 0, 1, 2, 3
_KM_PER_DEG_LAT = 110.574
_CANDIDATES = 32  # terminals a customer knows around home, favourites first

# ISO 18245 codes of shops: (code, share of shops, price level, share paid online).
_SHOP_CATEGORIES = (
    ("5411", 0.24, 1.0, 0.04),  # grocery stores, supermarkets
    ("5812", 0.12, 1.3, 0.02),  # restaurants
    ("5814", 0.10, 0.35, 0.05),  # fast food
    ("5541", 0.08, 1.5, 0.0),  # service stations
    ("5912", 0.06, 0.7, 0.05),  # pharmacies
    ("5311", 0.05, 1.8, 0.10),  # department stores
    ("5651", 0.05, 2.0, 0.15),  # clothing
    ("5732", 0.03, 3.5, 0.25),  # electronics
    ("5999", 0.05, 1.2, 0.20),  # miscellaneous retail
    ("4111", 0.05, 0.12, 0.30),  # commuter transport
    ("7523", 0.04, 0.15, 0.25),  # parking
    ("4121", 0.03, 0.8, 0.30),  # taxis
    ("5211", 0.04, 2.5, 0.05),  # home improvement
    ("5942", 0.02, 0.8, 0.10),  # book stores
    ("7011", 0.02, 5.0, 0.40),  # hotels
    ("7832", 0.02, 0.5, 0.30),  # cinemas
)
# Nationwide online merchants: (code, share, price level); they take mostly card-not-present.
_ONLINE_CATEGORIES = (
    ("5999", 0.30, 1.2),
    ("5815", 0.20, 0.3),  # digital goods
    ("4814", 0.10, 1.4),  # telecom
    ("5732", 0.10, 3.0),
    ("5651", 0.15, 1.8),
    ("5942", 0.10, 0.7),
    ("4722", 0.05, 6.0),  # travel agencies
)


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """Every knob of the simulated world; the defaults give a small country's card traffic.

    Rates and shares are fractions of all transactions. `scenario_mix` weighs scenarios 1..6
    (normalised), so scenario s makes about `fraud_rate * mix[s] / sum(mix)` of the traffic.
    Ranges are `(low, high)`, both included.
    """

    seed: int = 7
    n_customers: int = 5_000
    n_terminals: int = 10_000
    # A square region `box_km` on a side around the centre; `urban_share` of homes and shops
    # gather around `n_cities` cities of Zipf-like sizes, the rest are spread over the country.
    center_lat: float = 46.6
    center_lon: float = 2.4
    box_km: float = 600.0
    n_cities: int = 12
    urban_share: float = 0.75
    utc_offset_hours: float = 1.0  # local clock of the region: the rhythm follows it
    mean_tx_per_day: float = 2.0  # per customer, averaged over the week
    median_amount: float = 30.0  # typical customer's median purchase, before the price level
    home_radius_km: tuple[float, float] = (10.0, 30.0)  # each customer shops within such a radius
    online_share: float = 0.08  # mean share of a customer's purchases at online merchants
    online_merchant_share: float = 0.03  # share of terminals that are nationwide online merchants
    weekday_factors: tuple[float, ...] = (0.95, 0.95, 1.0, 1.0, 1.1, 1.2, 0.8)  # Monday first
    currency: str = "EUR"
    id_prefix: str = "S"  # transaction ids read f"{id_prefix}{day:05d}-{seq:08d}"
    fraud_rate: float = 0.007
    scenario_mix: tuple[float, ...] = (0.10, 0.25, 0.25, 0.15, 0.15, 0.10)
    outlier_amount_median: float = 1_500.0  # scenario 1
    compromised_terminal_days: tuple[int, int] = (14, 35)  # scenario 2: a skimmer's weeks
    stolen_credentials_days: tuple[int, int] = (3, 14)  # scenario 3
    stolen_credentials_share: float = 1 / 3  # of the victim's purchases, made online instead
    card_testing_probes: tuple[int, int] = (3, 8)  # scenario 4: tiny probes before the big one
    takeover_transactions: tuple[int, int] = (3, 8)  # scenario 5
    far_from_home_km: float = 150.0  # scenario 5: the fraudster shops at least this far away
    impossible_travel_km: float = 300.0  # scenario 6: within 2-45 minutes of a genuine purchase
    label_delay_median_days: float = 8.0  # chargeback delay, log-normal
    label_delay_sigma: float = 0.6
    never_reported_share: float = 0.10

    def __post_init__(self) -> None:
        problems = []
        if self.seed < 0:
            problems.append("seed must be >= 0")
        if self.n_customers < 1 or self.n_terminals < 2:
            problems.append("need at least 1 customer and 2 terminals")
        if not 0.0 <= self.fraud_rate < 0.5:
            problems.append("fraud_rate must be in [0, 0.5)")
        if len(self.scenario_mix) != 6 or min(self.scenario_mix) < 0 or not any(self.scenario_mix):
            problems.append("scenario_mix needs 6 non-negative weights, not all zero")
        if len(self.weekday_factors) != 7 or min(self.weekday_factors) <= 0:
            problems.append("weekday_factors needs 7 positive factors, Monday first")
        if not 0.0 <= self.never_reported_share <= 1.0:
            problems.append("never_reported_share must be in [0, 1]")
        if not 0.0 <= self.online_share < 1.0 or not 0.0 <= self.online_merchant_share < 1.0:
            problems.append("online_share and online_merchant_share must be in [0, 1)")
        if self.n_cities < 1 or self.mean_tx_per_day <= 0 or self.median_amount <= 0:
            problems.append("n_cities, mean_tx_per_day and median_amount must be positive")
        for name in (
            "compromised_terminal_days",
            "stolen_credentials_days",
            "card_testing_probes",
            "takeover_transactions",
        ):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                problems.append(f"{name} must be a range (low, high) with 1 <= low <= high")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def mix(self) -> np.ndarray:
        """Share of all transactions per scenario, index 0 unused."""
        weights = np.array(self.scenario_mix, dtype=np.float64)
        return np.concatenate([[0.0], self.fraud_rate * weights / weights.sum()])


@dataclass(frozen=True, slots=True, eq=False)
class World:
    """Customers and terminals, built once from the seed; arrays indexed by position."""

    config: SimulationConfig
    customer_ids: np.ndarray  # object str "C000123"
    home_xy: np.ndarray  # (n, 2) km east/north of the centre
    tx_per_day: np.ndarray
    amount_mu: np.ndarray  # log-normal purchase amount per customer
    amount_sigma: np.ndarray
    peak_hour: np.ndarray  # local hour around which the customer shops
    hour_spread: np.ndarray
    online_share: np.ndarray
    candidates: np.ndarray  # (n, _CANDIDATES) terminal indices near home, favourites first
    n_candidates: np.ndarray
    terminal_ids: np.ndarray  # object str "T00042"
    terminal_xy: np.ndarray
    terminal_lat: np.ndarray
    terminal_lon: np.ndarray
    terminal_category: np.ndarray  # object str, ISO 18245
    terminal_price: np.ndarray  # price level: multiplies the customer's amount
    terminal_online: np.ndarray  # share of card-not-present payments
    shops: np.ndarray  # indices of local shops (not online merchants)
    online_pool: np.ndarray  # indices of online merchants
    online_cdf: np.ndarray  # their popularity, cumulative
    terminal_rate: np.ndarray  # expected transactions per day
    weekday_factors: np.ndarray  # normalised to mean 1
    daily_transactions: float  # expected legitimate transactions per day
    strings: dict[str, pa.Array] = field(default_factory=dict)  # arrow copies of id columns

    @property
    def daily_total(self) -> float:
        """Expected transactions per day, the frauds added by scenarios 4-6 included."""
        return self.daily_transactions / (1.0 - self.config.mix[4:].sum())

    @property
    def natural_rate(self) -> float:
        """Transactions per second at the world's own rhythm."""
        return self.daily_total / 86_400.0


def stream_rng(seed: int, stream: int, day: int = 0) -> np.random.Generator:
    # Each day and stream has its own generator, so any day block can be made on its own.
    return np.random.default_rng([seed, stream, day + 1_000_000_000])


def build_world(config: SimulationConfig) -> World:
    """Draw the customers and terminals of the seeded world."""
    rng = stream_rng(config.seed, STREAM_WORLD)
    half = config.box_km / 2
    city_xy = rng.uniform(-0.8 * half, 0.8 * half, (config.n_cities, 2))
    city_weight = 1.0 / np.arange(1, config.n_cities + 1)
    city_weight /= city_weight.sum()
    city_sigma = 4.0 + 16.0 * np.sqrt(city_weight / city_weight[0])

    def place(n: int, urban_share: float) -> np.ndarray:
        city = rng.choice(config.n_cities, size=n, p=city_weight)
        urban = city_xy[city] + rng.standard_normal((n, 2)) * city_sigma[city, None]
        rural = rng.uniform(-half, half, (n, 2))
        return np.clip(np.where((rng.random(n) < urban_share)[:, None], urban, rural), -half, half)

    n_c, n_t = config.n_customers, config.n_terminals
    home_xy = place(n_c, config.urban_share)
    tx_per_day = rng.gamma(2.0, config.mean_tx_per_day / 2.0, n_c)
    amount_mu = math.log(config.median_amount) + rng.normal(0.0, 0.45, n_c)
    amount_sigma = rng.uniform(0.35, 0.75, n_c)
    peak_hour = np.clip(rng.normal(14.0, 2.5, n_c), 8.0, 20.0)
    hour_spread = rng.uniform(2.0, 4.0, n_c)
    radius = rng.uniform(*config.home_radius_km, n_c)

    n_online = min(round(n_t * config.online_merchant_share), n_t - 1)
    is_online = np.zeros(n_t, dtype=bool)
    is_online[rng.choice(n_t, size=n_online, replace=False)] = True
    shops, online_pool = np.flatnonzero(~is_online), np.flatnonzero(is_online)
    online_share = (
        rng.beta(1.5, 1.5 * (1 - config.online_share) / config.online_share, n_c)
        if n_online and config.online_share > 0
        else np.zeros(n_c)
    )

    terminal_xy = np.empty((n_t, 2))
    terminal_xy[shops] = place(len(shops), config.urban_share)
    terminal_xy[online_pool] = place(n_online, 1.0)  # head offices sit in cities
    category = np.empty(n_t, dtype=object)
    price = np.empty(n_t)
    online = np.empty(n_t)
    codes, shares, levels, paid_online = zip(*_SHOP_CATEGORIES, strict=True)
    pick = rng.choice(len(codes), size=len(shops), p=np.array(shares) / sum(shares))
    category[shops] = np.array(codes, dtype=object)[pick]
    price[shops] = np.array(levels)[pick]
    online[shops] = np.clip(np.array(paid_online)[pick] * rng.uniform(0.5, 1.5, len(shops)), 0, 1)
    codes, shares, levels = zip(*_ONLINE_CATEGORIES, strict=True)
    pick = rng.choice(len(codes), size=n_online, p=np.array(shares) / sum(shares))
    category[online_pool] = np.array(codes, dtype=object)[pick]
    price[online_pool] = np.array(levels)[pick]
    online[online_pool] = rng.uniform(0.85, 1.0, n_online)
    price *= rng.lognormal(0.0, 0.2, n_t)
    popularity = 1.0 / rng.permutation(np.arange(1, n_online + 1)) ** 0.8
    online_cdf = np.cumsum(popularity) / popularity.sum() if n_online else np.ones(0)
    if n_online:
        online_cdf[-1] = 1.0

    # Favourites: the nearest shops within the customer's radius (at least 3), shuffled with a
    # bias to the closest; a purchase picks position floor(n * u**2), so favourites dominate.
    k = min(_CANDIDATES, len(shops))
    distance, nearest = cKDTree(terminal_xy[shops]).query(home_xy, k=k)
    distance, nearest = distance.reshape(n_c, k), nearest.reshape(n_c, k)
    within = distance <= radius[:, None]
    within[:, : min(3, k)] = True
    key = np.where(within, distance * rng.exponential(1.0, (n_c, k)), np.inf)
    order = np.argsort(key, axis=1, kind="stable")
    candidates = shops[np.take_along_axis(nearest, order, axis=1)].astype(np.int32)
    n_candidates = within.sum(axis=1).astype(np.int32)

    weekday_factors = np.array(config.weekday_factors) / np.mean(config.weekday_factors)
    n, j = n_candidates[:, None], np.arange(k)[None, :]
    p_position = np.sqrt(np.minimum(j + 1, n) / n) - np.sqrt(np.minimum(j, n) / n)
    local = (tx_per_day * (1 - online_share))[:, None] * p_position
    terminal_rate = np.bincount(candidates.ravel(), local.ravel(), minlength=n_t)
    if n_online:
        terminal_rate[online_pool] += (tx_per_day * online_share).sum() * np.diff(
            online_cdf, prepend=0.0
        )

    lat0 = config.center_lat
    km_per_deg_lon = 111.320 * math.cos(math.radians(lat0))
    customer_ids = np.array([f"C{i:06d}" for i in range(n_c)], dtype=object)
    terminal_ids = np.array([f"T{i:05d}" for i in range(n_t)], dtype=object)
    return World(
        config=config,
        customer_ids=customer_ids,
        home_xy=home_xy,
        tx_per_day=tx_per_day,
        amount_mu=amount_mu,
        amount_sigma=amount_sigma,
        peak_hour=peak_hour,
        hour_spread=hour_spread,
        online_share=online_share,
        candidates=candidates,
        n_candidates=n_candidates,
        terminal_ids=terminal_ids,
        terminal_xy=terminal_xy,
        terminal_lat=lat0 + terminal_xy[:, 1] / _KM_PER_DEG_LAT,
        terminal_lon=config.center_lon + terminal_xy[:, 0] / km_per_deg_lon,
        terminal_category=category,
        terminal_price=price,
        terminal_online=online,
        shops=shops,
        online_pool=online_pool,
        online_cdf=online_cdf,
        terminal_rate=terminal_rate,
        weekday_factors=weekday_factors,
        daily_transactions=float(tx_per_day.sum()),
        strings={
            "customer_id": pa.array(customer_ids.tolist(), pa.string()),
            "terminal_id": pa.array(terminal_ids.tolist(), pa.string()),
            "merchant_category": pa.array(category.tolist(), pa.string()),
            "channel": pa.array(CHANNELS, pa.string()),
        },
    )
