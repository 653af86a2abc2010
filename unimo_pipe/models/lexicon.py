"""Word knowledge for hard negatives: attribute groups, inflection, and what counts as "the same thing".

A replacement is never a synonym or a hypernym/hyponym of the word it replaces ("man" -> "person" is not
a negative: the caption stays true). WordNet (models/wordnet.py) answers that for any word when it is
installed; this curated table of caption vocabulary (COCO / Visual Genome objects) is used with it and is
all there is without it: SYNONYMS groups words that name the same thing, HYPERNYMS maps a word to its
more general word. Two words are "related" when they share a synonym group, or one is reachable from
the other through HYPERNYMS (both directions); words outside the table are only related to themselves
and their inflections.
"""

from __future__ import annotations

import functools

COLOURS = {"red", "blue", "green", "yellow", "white", "black", "brown", "gray", "grey", "orange", "pink", "purple",
           "silver", "gold", "golden", "tan", "beige", "dark", "colorful", "colourful"}
SIZES = {"big", "small", "large", "little", "tiny", "huge", "tall", "short", "long", "giant", "wide", "narrow",
         "thin", "thick", "massive"}
MATERIALS = {"wooden", "wood", "metal", "metallic", "glass", "plastic", "stone", "brick", "leather", "paper",
             "concrete", "steel", "ceramic", "cotton", "wool", "marble", "iron", "rubber"}
COUNTS = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "several", "many", "few",
          "some", "multiple", "numerous"}
ATTRIBUTE_GROUPS = ("colour", "size", "material", "count", "other")
_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
                 "ten": 10}


def attribute_group(word: str) -> str:
    word = word.lower()
    if word in COLOURS:
        return "colour"
    if word in SIZES:
        return "size"
    if word in MATERIALS:
        return "material"
    if word in COUNTS or word.isdigit():
        return "count"
    return "other"


SYNONYMS = [
    {"man", "guy", "gentleman", "male"}, {"woman", "lady", "female"}, {"person", "people", "individual", "human"},
    {"child", "kid", "youngster"}, {"couch", "sofa"}, {"car", "automobile", "auto"}, {"bike", "bicycle"},
    {"motorcycle", "motorbike"}, {"cup", "mug"}, {"photo", "picture", "photograph", "image"},
    {"plane", "airplane", "aeroplane", "aircraft", "jet", "airliner"}, {"tv", "television"},
    {"road", "street"}, {"rock", "stone"}, {"ocean", "sea"}, {"sidewalk", "pavement"}, {"lawn", "grass"},
    {"phone", "cellphone", "smartphone", "telephone", "mobile"}, {"laptop", "notebook"}, {"doughnut", "donut"},
    {"hotdog", "sausage"}, {"gray", "grey"}, {"colorful", "colourful"}, {"big", "large"},
    {"small", "little"}, {"wooden", "wood"}, {"metal", "metallic"}, {"golden", "gold"}, {"cab", "taxi"},
    {"kitten", "kitty"}, {"puppy", "pup"}, {"photographer", "cameraman"},
    {"shore", "beach", "seashore"}, {"hill", "hillside"}, {"bag", "purse", "handbag"}, {"trash", "garbage"},
    {"fridge", "refrigerator"}, {"bathroom", "restroom", "toilet"}, {"glasses", "spectacles", "eyeglasses"},
]

HYPERNYMS = {
    # people
    "man": "adult", "woman": "adult", "adult": "person", "boy": "child", "girl": "child", "child": "person",
    "baby": "child", "player": "person", "skier": "person", "surfer": "person", "skateboarder": "person",
    "snowboarder": "person", "rider": "person", "cyclist": "rider", "biker": "rider", "pilot": "person",
    "chef": "cook", "cook": "person", "photographer": "person", "astronaut": "person", "student": "person",
    "teacher": "person", "worker": "person", "doctor": "person", "passenger": "person", "driver": "person",
    "spectator": "person", "crowd": "people", "family": "people", "team": "people", "soldier": "person",
    "officer": "person", "policeman": "officer", "tourist": "person", "pedestrian": "person",
    # animals
    "dog": "animal", "puppy": "dog", "cat": "animal", "kitten": "cat", "horse": "animal", "pony": "horse",
    "foal": "horse", "cow": "cattle", "bull": "cattle", "calf": "cattle", "cattle": "animal", "sheep": "animal",
    "lamb": "sheep", "elephant": "animal", "giraffe": "animal", "zebra": "animal", "bear": "animal",
    "bird": "animal", "duck": "bird", "pigeon": "bird", "seagull": "bird", "gull": "bird", "eagle": "bird",
    "parrot": "bird", "goose": "bird", "chicken": "bird", "fish": "animal", "buffalo": "animal", "deer": "animal",
    "animal": "creature",
    # vehicles
    "car": "vehicle", "truck": "vehicle", "bus": "vehicle", "train": "vehicle", "motorcycle": "vehicle",
    "bike": "vehicle", "van": "vehicle", "taxi": "car", "jeep": "car", "suv": "car", "boat": "vessel",
    "ship": "vessel", "sailboat": "boat", "canoe": "boat", "kayak": "boat", "vessel": "vehicle",
    "plane": "aircraft", "helicopter": "aircraft", "aircraft": "vehicle", "tram": "vehicle", "scooter": "vehicle",
    "rocket": "vehicle", "tractor": "vehicle",
    # food
    "apple": "fruit", "banana": "fruit", "orange": "fruit", "pear": "fruit", "plum": "fruit", "grape": "fruit",
    "strawberry": "fruit", "lemon": "fruit", "fruit": "food", "broccoli": "vegetable", "carrot": "vegetable",
    "tomato": "vegetable", "onion": "vegetable", "pepper": "vegetable", "lettuce": "vegetable",
    "potato": "vegetable", "vegetable": "food", "pizza": "food", "sandwich": "food", "cake": "dessert",
    "donut": "dessert", "cookie": "dessert", "dessert": "food", "bread": "food", "loaf": "bread", "soup": "food",
    "pasta": "food", "spaghetti": "pasta", "cheese": "food", "meat": "food", "hotdog": "food", "salad": "food",
    "meal": "food", "dish": "food", "coffee": "drink", "espresso": "coffee", "tea": "drink", "juice": "drink",
    "wine": "drink", "beer": "drink", "water": "drink", "drink": "beverage",
    # furniture and household
    "chair": "seat", "bench": "seat", "stool": "seat", "couch": "seat", "seat": "furniture", "table": "furniture",
    "desk": "table", "bed": "furniture", "shelf": "furniture", "cabinet": "furniture", "dresser": "furniture",
    "cup": "container", "bowl": "container", "glass": "container", "bottle": "container", "vase": "container",
    "jar": "container", "box": "container", "basket": "container", "bucket": "container", "plate": "dishware",
    "saucer": "dishware", "dishware": "container", "laptop": "computer", "computer": "device",
    "phone": "device", "camera": "device", "remote": "device", "keyboard": "device", "mouse": "device",
    "clock": "device", "fork": "utensil", "knife": "utensil", "spoon": "utensil", "utensil": "tool",
    # clothing
    "shirt": "clothing", "jacket": "clothing", "coat": "clothing", "dress": "clothing", "hat": "headwear",
    "cap": "headwear", "helmet": "headwear", "headwear": "clothing", "shoe": "footwear", "boot": "footwear",
    "sneaker": "shoe", "footwear": "clothing", "suit": "clothing", "tie": "clothing", "scarf": "clothing",
    "jeans": "pants", "pants": "clothing", "shorts": "clothing", "uniform": "clothing", "glove": "clothing",
    # nature and places
    "tree": "plant", "flower": "plant", "rose": "flower", "bush": "plant", "grass": "plant", "pine": "tree",
    "oak": "tree", "palm": "tree", "mountain": "landform", "hill": "landform", "field": "land", "lawn": "land",
    "meadow": "field", "beach": "land", "river": "water", "lake": "water", "ocean": "water", "pond": "water",
    "wave": "water", "street": "way", "road": "way", "path": "way", "sidewalk": "way", "highway": "road",
    "building": "structure", "house": "building", "tower": "structure", "bridge": "structure",
    "church": "building", "skyscraper": "building", "barn": "building", "lighthouse": "tower",
    "kitchen": "room", "bedroom": "room", "bathroom": "room", "room": "place",
    "galaxy": "celestial body", "star": "celestial body", "moon": "celestial body", "planet": "celestial body",
}


@functools.cache
def _synonym_group(word: str) -> frozenset[str]:
    for group in SYNONYMS:
        if word in group:
            return frozenset(group)
    return frozenset({word})


@functools.cache
def _ancestors(word: str) -> frozenset[str]:
    """The word, its synonyms, and everything more general than any of them."""
    found: set[str] = set()
    frontier = set(_synonym_group(word))
    while frontier:
        current = frontier.pop()
        if current in found:
            continue
        found.add(current)
        frontier |= set(_synonym_group(current))
        if current in HYPERNYMS:
            frontier.add(HYPERNYMS[current])
    return frozenset(found)


@functools.cache
def _descendants() -> dict[str, frozenset[str]]:
    """Every table word's more specific words: the inverse of _ancestors."""
    words = set(HYPERNYMS) | set(HYPERNYMS.values()) | {w for group in SYNONYMS for w in group}
    found: dict[str, set[str]] = {}
    for word in words:
        for ancestor in _ancestors(word):
            found.setdefault(ancestor, set()).add(word)
    return {word: frozenset(more_specific) for word, more_specific in found.items()}


@functools.lru_cache(maxsize=1 << 16)
def relations_by_reason(word: str) -> dict[str, frozenset[str]]:
    """The table's words related to `word` by reason: "synonym", "hypernym" (more general), "hyponym"."""
    word = word.lower()
    synonyms = _synonym_group(word) - {word}
    more_general = _ancestors(word) - synonyms - {word}
    more_specific = _descendants().get(word, frozenset()) - synonyms - more_general - {word}
    return {"synonym": synonyms, "hypernym": more_general, "hyponym": more_specific}


# Common caption compounds that WordNet 3.0 does not list as one lemma; used with WordNet's own.
EXTRA_COMPOUNDS = frozenset({"stop sign", "cell phone", "traffic light", "street sign", "parking meter",
                             "double decker", "fire truck", "baseball bat", "baseball glove", "tennis court",
                             "living room", "ski slope", "flat screen", "hair drier", "hair dryer", "wine glass",
                             "street light", "passenger train", "freight train", "stuffed animal"})


@functools.lru_cache(maxsize=1 << 16)
def related_words(word: str) -> frozenset[str]:
    """The word, its synonyms, and every word more general or more specific than it (lower-cased)."""
    word = word.lower()
    return _ancestors(word) | _descendants().get(word, frozenset()) | {word}


@functools.lru_cache(maxsize=1 << 16)
def related(a: str, b: str) -> bool:
    """True when replacing `a` by `b` could keep the caption true: same word, synonym, hypernym or hyponym."""
    a, b = a.lower(), b.lower()
    return singularize(a) == singularize(b) or b in related_words(a)


_IRREGULAR_PLURALS = {"man": "men", "woman": "women", "child": "children", "person": "people", "foot": "feet",
                      "tooth": "teeth", "mouse": "mice", "goose": "geese", "knife": "knives", "leaf": "leaves",
                      "shelf": "shelves", "wolf": "wolves", "life": "lives", "wife": "wives", "half": "halves",
                      "loaf": "loaves", "calf": "calves", "scarf": "scarves", "potato": "potatoes",
                      "tomato": "tomatoes", "hero": "heroes", "cactus": "cacti"}
_UNCHANGING = {"sheep", "fish", "deer", "cattle", "glasses", "jeans", "pants", "shorts", "scissors", "people",
               "series", "species", "aircraft", "food", "grass", "water", "furniture", "broccoli", "cheese"}
_IRREGULAR_SINGULARS = {v: k for k, v in _IRREGULAR_PLURALS.items()}
# "fireman" -> "firemen", but not these
_MAN_NOT_MEN = {"human", "german", "shaman", "talisman", "caiman", "cayman", "ottoman", "roman", "doberman"}
_MEN_NOT_MAN = {"specimen", "abdomen", "omen", "stamen", "semen", "regimen", "amen", "hymen"}


def pluralize(noun: str) -> str:
    if noun in _UNCHANGING or " " in noun:
        return noun
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if noun.endswith("man") and noun not in _MAN_NOT_MEN:
        return noun[:-3] + "men"
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and len(noun) > 1 and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def singularize(noun: str) -> str:
    if noun in _UNCHANGING:
        return noun
    if noun in _IRREGULAR_SINGULARS:
        return _IRREGULAR_SINGULARS[noun]
    if noun.endswith("men") and noun not in _MEN_NOT_MAN:
        return noun[:-3] + "man"
    if noun.endswith("ies") and len(noun) > 4:
        return noun[:-3] + "y"
    if noun.endswith(("ches", "shes", "xes", "sses", "zes")):
        return noun[:-2]
    if noun.endswith("s") and not noun.endswith("ss"):
        return noun[:-1]
    return noun


_AN_EXCEPTIONS = tuple({"one", "once", "user", "university", "unicorn", "uniform", "unit", "union", "european", "euro",
                  "usual", "useful", "utensil", "ukulele", "ufo", "uniformed"})
_AN_SILENT_H = ("hour", "honest", "honor", "honour", "heir")


def indefinite_article(next_word: str) -> str:
    """'a' or 'an' for the word that follows the article (by sound, with the common exceptions)."""
    word = next_word.lower().strip("\"'(")
    if not word:
        return "a"
    if word.startswith(_AN_SILENT_H):
        return "an"
    if word.startswith(_AN_EXCEPTIONS):
        return "a"
    return "an" if word[0] in "aeiou" else "a"


def number_word_value(word: str) -> int | None:
    word = word.lower()
    if word.isdigit():
        return int(word)
    return _NUMBER_WORDS.get(word)
