"""A small built-in task suite in the instruction-induction style (Honovich et al. 2022), chosen so a
135M-parameter chat model gets some of each right: word transformations, lookups and a two-way
classification. Each task has a hand-written instruction to compare searched ones against, and 50
examples: after 5 demonstrations and a dev set of up to 15, at least 30 remain for the test split.

Small chat models answer in a sentence ("The plural form of the word is cats"), so tasks score with
the `final_word` metric: the expected one-word answer must be the first or last word of the reply.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alloyml.automl.prompting import Example
from alloyml.errors import InvalidInputError


@dataclass(frozen=True)
class Task:
    name: str
    instruction: str  # the hand-written baseline
    examples: tuple[Example, ...]
    metric: str = "final_word"

    def split(self, n_demos: int, n_dev: int | None = None, seed: int = 0) -> tuple[list[Example], list[Example]]:
        """(demos, dev): disjoint, after a seeded shuffle; `dev` gets `n_dev` (default: the rest)."""
        if n_demos < 0 or n_demos >= len(self.examples):
            raise InvalidInputError(f"n_demos must be in [0, {len(self.examples) - 1}] for {self.name}, got {n_demos}")
        order = np.random.default_rng(seed).permutation(len(self.examples))
        shuffled = [self.examples[i] for i in order]
        dev = shuffled[n_demos:] if n_dev is None else shuffled[n_demos : n_demos + n_dev]
        return shuffled[:n_demos], dev


PROMPT_TASKS: dict[str, Task] = {}


def _task(name: str, instruction: str, pairs: str) -> None:
    examples = tuple(Example(*(s.strip() for s in line.split("|"))) for line in pairs.strip().splitlines())
    PROMPT_TASKS[name] = Task(name, instruction, examples)


def get_task(name: str) -> Task:
    if name not in PROMPT_TASKS:
        raise InvalidInputError(f"unknown task {name!r}; known: {sorted(PROMPT_TASKS)}")
    return PROMPT_TASKS[name]


_task(
    "plural",
    "Write the plural form of the word.",
    """
    cat | cats
    dog | dogs
    box | boxes
    city | cities
    tree | trees
    book | books
    bus | buses
    baby | babies
    car | cars
    house | houses
    dish | dishes
    party | parties
    bird | birds
    pen | pens
    glass | glasses
    story | stories
    apple | apples
    chair | chairs
    fox | foxes
    lady | ladies
    lamp | lamps
    church | churches
    brush | brushes
    cherry | cherries
    key | keys
    boy | boys
    day | days
    watch | watches
    hat | hats
    map | maps
    cup | cups
    desk | desks
    bench | benches
    berry | berries
    pony | ponies
    class | classes
    kiss | kisses
    toy | toys
    road | roads
    shoe | shoes
    coin | coins
    door | doors
    ship | ships
    bell | bells
    cake | cakes
    girl | girls
    dress | dresses
    fly | flies
    penny | pennies
    wish | wishes
    """,
)
_task(
    "capital",
    "Write the capital city of the country.",
    """
    France | Paris
    Japan | Tokyo
    Italy | Rome
    Germany | Berlin
    Spain | Madrid
    Russia | Moscow
    Egypt | Cairo
    Greece | Athens
    Portugal | Lisbon
    Ireland | Dublin
    Austria | Vienna
    Norway | Oslo
    Peru | Lima
    Kenya | Nairobi
    Thailand | Bangkok
    Poland | Warsaw
    Sweden | Stockholm
    Cuba | Havana
    Hungary | Budapest
    Finland | Helsinki
    Canada | Ottawa
    China | Beijing
    Belgium | Brussels
    Denmark | Copenhagen
    Netherlands | Amsterdam
    Switzerland | Bern
    Turkey | Ankara
    Iran | Tehran
    Iraq | Baghdad
    Syria | Damascus
    Lebanon | Beirut
    Jordan | Amman
    Afghanistan | Kabul
    Pakistan | Islamabad
    Bangladesh | Dhaka
    Nepal | Kathmandu
    Vietnam | Hanoi
    Indonesia | Jakarta
    Philippines | Manila
    Chile | Santiago
    Venezuela | Caracas
    Ecuador | Quito
    Ghana | Accra
    Morocco | Rabat
    Tunisia | Tunis
    Algeria | Algiers
    Ukraine | Kyiv
    Romania | Bucharest
    Bulgaria | Sofia
    Serbia | Belgrade
    """,
)
_task(
    "antonym",
    "Write the opposite of the word.",
    """
    hot | cold
    big | small
    up | down
    fast | slow
    happy | sad
    light | dark
    open | closed
    early | late
    strong | weak
    rich | poor
    full | empty
    high | low
    wet | dry
    old | young
    hard | soft
    good | bad
    long | short
    loud | quiet
    first | last
    win | lose
    inside | outside
    push | pull
    day | night
    left | right
    black | white
    buy | sell
    true | false
    thick | thin
    wide | narrow
    heavy | light
    clean | dirty
    cheap | expensive
    love | hate
    give | take
    near | far
    north | south
    east | west
    always | never
    before | after
    sweet | sour
    alive | dead
    deep | shallow
    tall | short
    question | answer
    enter | exit
    ancient | modern
    friend | enemy
    top | bottom
    male | female
    boy | girl
    """,
)
_task(
    "sentiment",
    "Classify the sentiment of the review as positive or negative.",
    """
    I loved this movie. | positive
    The food was awful. | negative
    What a wonderful day! | positive
    This is the worst phone I ever bought. | negative
    The staff were friendly and helpful. | positive
    The room was dirty and smelled bad. | negative
    Great value, I would buy it again. | positive
    It broke after two days. | negative
    The concert was amazing. | positive
    I want my money back. | negative
    Beautiful view and a relaxing stay. | positive
    The service was slow and rude. | negative
    My kids enjoyed every minute. | positive
    Boring plot and terrible acting. | negative
    Excellent quality for the price. | positive
    The battery dies within an hour. | negative
    A delightful book, warmly recommended. | positive
    Never going back to that restaurant. | negative
    Fantastic support team. | positive
    The package arrived damaged. | negative
    The hotel was clean and quiet. | positive
    I regret buying this blender. | negative
    Best pizza in town! | positive
    The screen cracked on the first day. | negative
    A truly inspiring speech. | positive
    The instructions were confusing and useless. | negative
    The garden looks lovely in spring. | positive
    The train was late again. | negative
    I am very happy with my new bike. | positive
    The soup was cold and tasteless. | negative
    Such a fun and friendly place. | positive
    Worst customer service ever. | negative
    The movie made me smile all evening. | positive
    The shoes fell apart in a week. | negative
    Lovely people and great music. | positive
    The app keeps crashing. | negative
    This course taught me so much. | positive
    The noise kept me awake all night. | negative
    Perfect fit and very comfortable. | positive
    The waiter ignored us for an hour. | negative
    An absolute joy to read. | positive
    The coffee tasted burnt. | negative
    The trip was well organised and fun. | positive
    My order never arrived. | negative
    I would happily recommend this dentist. | positive
    The laptop overheats constantly. | negative
    Brilliant performance by the whole cast. | positive
    The hike was muddy and miserable. | negative
    Fresh bread and a warm welcome. | positive
    Cheap materials and poor design. | negative
    """,
)
_task(
    "first_letter",
    "Write the first letter of the word.",
    """
    banana | b
    house | h
    tiger | t
    river | r
    apple | a
    mountain | m
    garden | g
    window | w
    pencil | p
    orange | o
    lemon | l
    castle | c
    dragon | d
    number | n
    flower | f
    kitten | k
    silver | s
    yellow | y
    engine | e
    violin | v
    queen | q
    jacket | j
    umbrella | u
    xylophone | x
    zebra | z
    island | i
    button | b
    candle | c
    doctor | d
    eagle | e
    forest | f
    guitar | g
    helmet | h
    insect | i
    jungle | j
    ladder | l
    market | m
    needle | n
    ocean | o
    puzzle | p
    rabbit | r
    saddle | s
    tunnel | t
    valley | v
    wagon | w
    yogurt | y
    anchor | a
    kettle | k
    planet | p
    marble | m
    """,
)
