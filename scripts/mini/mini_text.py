# ruff: noqa: SIM905  (word lists are written as text and split: easier to read and edit)
"""The mini model's corpus text: short English sentences from a grammar of this project's own.

Everything here (the word lists, the templates, the code) was written for mimo-audio and is under the project's
licence (Apache-2.0); no outside text is used. Sentences are drawn by a seeded random generator, so the same
seed gives the same sentences on every machine (only Python's ``random.Random`` with a fixed seed and sorted
data are used: no hash order, no locale).

    python scripts/mini/mini_text.py            # writes scripts/mini/text/{train,test}.txt
    python scripts/mini/mini_text.py --check    # exits 1 if the shipped files differ from what the code makes

The split is deterministic: the sentences are generated, de-duplicated, shuffled with the seed, and the first
``TEST_SIZE`` go to test, the rest to train. A test sentence never appears in train (exact match after
lower-casing and dropping punctuation).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

SEED = 20261202
TOTAL = 7000  # distinct sentences
TEST_SIZE = 550  # 50 per training voice of the corpus (11 training speakers)
MIN_WORDS, MAX_WORDS = 4, 14
HERE = Path(__file__).resolve().parent
TEXT_DIR = HERE / "text"

# ---------------------------------------------------------------------------------------------- the words
NAMES = """Adam Alice Amy Andrew Anna Arthur Ben Bella Carl Carol Charlie Chloe Chris Clara Daniel Diana David Dora
Edward Ella Emily Emma Eric Eva Frank Fiona George Grace Hannah Harry Helen Henry Isaac Iris Jack Jane James Julia
John Kate Kevin Laura Leo Lily Lucy Luke Maria Mark Martin Mary Max Mia Nathan Nina Noah Olivia Oscar Paul Peter
Rachel Robert Rose Ruby Sam Sarah Simon Sophie Steven Susan Thomas Tom Victor Vera William Zoe Albert Amber Bruce
Caleb Dennis Ethan Felix Gloria Hugo Ivan Jasmine Joel Karen Linda Louis Mason Megan Molly Owen Patrick Philip
Quinn Ralph Rita Ryan Sandra Tina Ursula Walter Wendy Yvonne
Aaron Abigail Adrian Agnes Alan Alex Alfred Alison Anthony Barbara Benjamin Bernard Betty Brian Bridget
Catherine Cecilia Colin Connor Craig Daisy Dean Derek Dorothy Douglas Duncan Eleanor Elijah Elliot Emma Esther
Evelyn Florence Frederick Gavin Gemma Gordon Graham Gregory Harold Heather Holly Howard Ian Irene Isabel Jacob
Jeremy Jessica Joan Joseph Joyce Judith Julian Justin Keith Kenneth Laurence Leonard Lewis Lisa Logan Lorna
Margaret Marcus Martha Matthew Melanie Michael Miranda Monica Neil Nicholas Norman Oliver Pamela Penny Phoebe
Rebecca Richard Roger Ronald Rosalind Samuel Sebastian Stella Stuart Sylvia Teresa Theo Timothy Trevor Valerie
Vincent Violet Wayne Xavier""".split()

RELATIVES = """mother father brother sister aunt uncle cousin grandmother grandfather son daughter wife husband
friend neighbor teacher boss niece nephew roommate
colleague classmate partner landlord godmother stepfather flatmate""".split()

OCCUPATIONS = """doctor nurse teacher farmer baker driver pilot painter writer singer dancer cook waiter
student lawyer judge police_officer firefighter mechanic engineer scientist dentist gardener plumber carpenter
builder fisherman sailor soldier shopkeeper librarian photographer reporter actor musician manager cleaner
postman banker tailor barber butcher guard
architect pharmacist surgeon professor journalist editor translator secretary accountant
electrician painter_and_decorator zookeeper beekeeper shepherd jeweler florist chemist mayor captain coach
referee lifeguard astronaut detective inventor magician clown potter weaver blacksmith""".split()

# food: (singular, plural or None for mass nouns)
FOOD = """apple:apples banana:bananas orange:oranges pear:pears peach:peaches lemon:lemons cherry:cherries
grape:grapes tomato:tomatoes potato:potatoes carrot:carrots onion:onions cucumber:cucumbers pepper:peppers
egg:eggs sandwich:sandwiches cake:cakes pie:pies cookie:cookies biscuit:biscuits muffin:muffins pizza:pizzas
burger:burgers sausage:sausages pancake:pancakes melon:melons pumpkin:pumpkins mushroom:mushrooms
strawberry:strawberries plum:plums bread rice soup cheese butter milk coffee tea juice water honey jam salad
apricot:apricots avocado:avocados bean:beans pea:peas cabbage:cabbages lettuce:lettuces radish:radishes
garlic ginger nut:nuts walnut:walnuts almond:almonds peanut:peanuts raisin:raisins date:dates fig:figs
pineapple:pineapples coconut:coconuts mango:mangoes kiwi:kiwis blueberry:blueberries raspberry:raspberries
olive:olives pickle:pickles noodle:noodles dumpling:dumplings omelette:omelettes waffle:waffles doughnut:doughnuts
croissant:croissants bagel:bagels cracker:crackers pudding:puddings tart:tarts sweet:sweets lollipop:lollipops
steak:steaks roll:rolls bun:buns toast porridge oatmeal ham bacon turkey lamb pork tuna salmon shrimp cocoa
vinegar mustard ketchup mayonnaise gravy custard jelly pastry curry stew broth spinach broccoli celery corn
lentils oats barley wheat syrup
pasta chicken fish meat beef chocolate yogurt cereal sugar salt flour popcorn lemonade cream""".split()

OBJECTS = """book:books pen:pens pencil:pencils letter:letters key:keys box:boxes bag:bags bottle:bottles cup:cups
plate:plates bowl:bowls glass:glasses knife:knives fork:forks spoon:spoons chair:chairs table:tables lamp:lamps
clock:clocks phone:phones camera:cameras computer:computers radio:radios map:maps ticket:tickets umbrella:umbrellas
wallet:wallets basket:baskets bucket:buckets ladder:ladders hammer:hammers rope:ropes candle:candles
blanket:blankets pillow:pillows towel:towels mirror:mirrors picture:pictures painting:paintings photo:photos
newspaper:newspapers magazine:magazines notebook:notebooks envelope:envelopes parcel:parcels present:presents
toy:toys ball:balls kite:kites doll:dolls guitar:guitars piano:pianos drum:drums violin:violins window:windows
door:doors fence:fences gate:gates shelf:shelves drawer:drawers suitcase:suitcases tent:tents watch:watches
ring:rings necklace:necklaces brush:brushes comb:combs sofa:sofas bed:beds desk:desks carpet:carpets
jar:jars kettle:kettles pan:pans oven:ovens fridge:fridges stove:stoves sink:sinks flower:flowers plant:plants
tree:trees stone:stones shell:shells coin:coins card:cards list:lists recipe:recipes
needle:needles thread
button:buttons scissors glue tape paper string wire battery:batteries bulb:bulbs switch:switches plug:plugs
cable:cables screen:screens keyboard:keyboards printer:printers speaker:speakers headphones tablet:tablets
calendar:calendars diary:diaries dictionary:dictionaries novel:novels poem:poems album:albums record:records
statue:statues vase:vases teapot:teapots mug:mugs saucer:saucers tray:trays jug:jugs barrel:barrels sack:sacks
crate:crates cushion:cushions curtain:curtains rug:rugs wardrobe:wardrobes cupboard:cupboards stool:stools
bench:benches hammock:hammocks mattress:mattresses blender:blenders toaster:toasters heater:heaters fan:fans
shovel:shovels rake:rakes spade:spades saw:saws drill:drills screwdriver:screwdrivers nail:nails bolt:bolts
lock:locks chain:chains wheel:wheels sail:sails oar:oars flag:flags banner:banners poster:posters
medal:medals trophy:trophies crown:crowns mask:masks puzzle:puzzles game:games helmet:helmets
backpack:backpacks purse:purses briefcase:briefcases passport:passports invitation:invitations
receipt:receipts sign:signs badge:badges whistle:whistles bell:bells flute:flutes trumpet:trumpets
harp:harps microphone:microphones telescope:telescopes compass:compasses globe:globes torch:torches
lantern:lanterns match:matches feather:feathers leaf:leaves branch:branches seed:seeds rose:roses
tulip:tulips daisy:daisies sunflower:sunflowers cactus:cacti pebble:pebbles brick:bricks tile:tiles
log:logs""".split()

CLOTHING = """coat:coats hat:hats scarf:scarves shirt:shirts dress:dresses jacket:jackets sweater:sweaters
skirt:skirts boot:boots shoe:shoes sock:socks glove:gloves belt:belts tie:ties uniform:uniforms
trousers
jeans shorts pajamas slipper:slippers sandal:sandals cap:caps hood:hoods vest:vests apron:aprons
blouse:blouses cardigan:cardigans suit:suits gown:gowns cloak:cloaks mitten:mittens bracelet:bracelets
raincoat:raincoats""".split()

ANIMALS = """dog:dogs cat:cats horse:horses cow:cows sheep:sheep goat:goats pig:pigs rabbit:rabbits mouse:mice
bird:birds duck:ducks goose:geese chicken:chickens owl:owls fox:foxes wolf:wolves bear:bears deer:deer
lion:lions tiger:tigers elephant:elephants monkey:monkeys squirrel:squirrels frog:frogs turtle:turtles
snake:snakes whale:whales dolphin:dolphins parrot:parrots puppy:puppies kitten:kittens donkey:donkeys
camel:camels zebra:zebras penguin:penguins swan:swans bee:bees butterfly:butterflies spider:spiders
giraffe:giraffes hippo:hippos kangaroo:kangaroos koala:koalas panda:pandas badger:badgers hedgehog:hedgehogs
otter:otters beaver:beavers seal:seals shark:sharks crab:crabs octopus:octopuses lobster:lobsters
eagle:eagles hawk:hawks crow:crows pigeon:pigeons sparrow:sparrows robin:robins seagull:seagulls
peacock:peacocks turkey:turkeys lamb:lambs calf:calves pony:ponies hamster:hamsters goldfish ant:ants
beetle:beetles snail:snails worm:worms moth:moths bat:bats raccoon:raccoons moose:moose buffalo:buffaloes
lizard:lizards crocodile:crocodiles""".split()

VEHICLES = """car:cars bus:buses train:trains bike:bikes boat:boats truck:trucks van:vans taxi:taxis
plane:planes ship:ships tractor:tractors scooter:scooters
lorry:lorries motorbike:motorbikes
tram:trams ferry:ferries helicopter:helicopters canoe:canoes yacht:yachts ambulance:ambulances
wagon:wagons caravan:caravans""".split()

# places: (noun, preposition used for "being there")
PLACES = """kitchen:in garden:in park:in station:at library:at school:at office:at market:at shop:in
beach:on river:by lake:by forest:in village:in city:in hospital:at museum:at cinema:at theater:at church:at
bank:at bakery:at restaurant:in cafe:in hotel:at airport:at farm:on bridge:on street:on road:on hill:on
mountain:on island:on harbor:in square:in bedroom:in bathroom:in hall:in attic:in basement:in garage:in
yard:in playground:in stadium:at zoo:at castle:in cottage:in barn:in field:in valley:in corner:in
office_building:in supermarket:at post_office:at swimming_pool:at car_park:in train_station:at
bookshop:in pharmacy:at bus_stop:at gym:at factory:at warehouse:in laboratory:in classroom:in
living_room:in dining_room:in staircase:on balcony:on roof:on porch:on pier:on meadow:in orchard:in
vineyard:in desert:in jungle:in cave:in waterfall:by pond:by canal:by lighthouse:at tower:in palace:in
temple:at gallery:at concert_hall:at market_square:in town_hall:at fire_station:at police_station:at
petrol_station:at laundry:at hairdresser:at dentist:at clinic:at university:at college:at kindergarten:at
campsite:at ski_resort:at countryside:in suburbs:in""".split()

CITIES = """London Paris Rome Berlin Madrid Vienna Dublin Oslo Prague Lisbon Boston Chicago Toronto Sydney Tokyo
Cairo Delhi Moscow Athens Geneva Denver Seattle Houston Miami Glasgow Bristol York Leeds Cardiff Edinburgh
Canada Spain France Italy Japan India Mexico Brazil Norway Sweden Egypt Greece Ireland Scotland Wales
Germany Portugal Kenya Peru Chile
Amsterdam Brussels Copenhagen Helsinki Stockholm Warsaw Budapest
Zurich Munich Hamburg Milan Venice Florence Naples Barcelona Seville Lyon Marseille Nice Manchester Liverpool
Oxford Cambridge Belfast Melbourne Perth Auckland Wellington Vancouver Montreal Ottawa Atlanta Dallas Phoenix
Portland Nashville Detroit Baltimore Havana Lima Santiago Bogota Nairobi Lagos Istanbul Dubai Bangkok
Singapore Seoul Beijing Shanghai Manila Jakarta Hanoi Vietnam China Korea Thailand Turkey Morocco Argentina
Australia Iceland Finland Denmark Austria Poland Hungary Belgium Holland Switzerland Croatia Jamaica
Nigeria Ghana Ethiopia""".split()

COLORS = """red blue green yellow white black brown gray pink purple orange golden silver dark pale bright
navy crimson scarlet violet turquoise beige cream""".split()
SIZES = "big small tiny huge little tall short long heavy light narrow wide enormous giant massive slim".split()
AGES = "old new young ancient modern".split()
GENERAL = """elegant fancy ordinary unusual rare precious fragile sturdy smooth rough sharp blunt
thick thin flat curved square colorful striped spotted wooden plastic metal glass woolen cotton leather
paper stone handmade secondhand favorite spare lucky magic tidy messy sticky damp dusty crooked neat
comfortable uncomfortable valuable worthless elegant
nice beautiful strange lovely ugly clean dirty cheap expensive broken wet dry warm cold soft hard
round empty full quiet noisy useful simple famous special perfect wonderful terrible funny pretty plain
shiny dusty""".split()
TASTES = "fresh sweet sour salty bitter spicy delicious tasty hot cold warm ripe stale crunchy juicy".split()
FEELINGS = """anxious cross delighted disappointed embarrassed frightened grateful hopeful jealous
relieved scared shy upset confused curious eager exhausted furious homesick puzzled thankful thrilled
happy sad tired angry hungry thirsty busy excited nervous proud worried bored sleepy calm
surprised glad lonely cheerful grumpy patient""".split()
WEATHER = "sunny rainy windy cloudy foggy snowy stormy cold warm hot freezing wet dry bright".split()

TIMES_PAST = """yesterday last_night last_week last_month last_year this_morning on_Monday on_Tuesday
on_Wednesday on_Thursday on_Friday on_Saturday on_Sunday two_days_ago a_week_ago an_hour_ago in_the_summer
in_the_winter in_the_spring in_the_autumn after_lunch before_dinner after_school at_midnight at_noon
at_dawn at_sunset earlier_today""".split()
TIMES_FUTURE = """tomorrow tonight next_week next_month next_year on_Monday on_Friday on_Sunday this_afternoon
this_evening after_lunch before_dinner in_the_morning in_an_hour at_noon soon later next_summer""".split()
TIMES_HABIT = """every_day every_morning every_evening every_week on_Sundays on_Mondays on_Fridays at_weekends
in_the_evening in_the_morning after_work before_breakfast twice_a_week once_a_month in_the_summer""".split()
ADVERBS = """quickly slowly carefully quietly loudly happily sadly gently suddenly finally nearly always often
sometimes never usually rarely
proudly eagerly politely bravely calmly nervously patiently secretly honestly easily really very quite almost together alone early late again already still""".split()
NUMBERS = "two three four five six seven eight nine ten eleven twelve twenty fifty a_hundred".split()

# verbs: base:past:participle (participle = past when omitted; past by rule when only the base is given)
IRREGULAR = """be:was:been have:had do:did:done go:went:gone see:saw:seen eat:ate:eaten drink:drank:drunk
take:took:taken give:gave:given make:made find:found buy:bought bring:brought think:thought catch:caught
teach:taught fight:fought sell:sold tell:told hold:held feel:felt keep:kept leave:left lose:lost meet:met
send:sent spend:spent build:built lend:lent sleep:slept sweep:swept read:read lead:led hear:heard say:said
pay:paid lay:laid sit:sat stand:stood understand:understood win:won begin:began:begun swim:swam:swum
sing:sang:sung ring:rang:rung run:ran:run come:came:come become:became:become write:wrote:written
ride:rode:ridden drive:drove:driven rise:rose:risen speak:spoke:spoken break:broke:broken choose:chose:chosen
steal:stole:stolen wake:woke:woken forget:forgot:forgotten get:got fall:fell:fallen know:knew:known
grow:grew:grown throw:threw:thrown draw:drew:drawn fly:flew:flown wear:wore:worn tear:tore:torn
hide:hid:hidden bite:bit:bitten shake:shook:shaken cut:cut put:put shut:shut hit:hit set:set let:let
hurt:hurt cost:cost feed:fed dig:dug hang:hung light:lit wind:wound freeze:froze:frozen""".split()
DOUBLED = """stop:stopped plan:planned drop:dropped hug:hugged shop:shopped wrap:wrapped grab:grabbed pat:patted chop:chopped jog:jogged knit:knitted skip:skipped
fit:fitted travel:traveled""".split()


def _pairs(items: list[str]) -> list[tuple[str, str | None]]:
    out = []
    for item in items:
        one, _, many = item.partition(":")
        out.append((one.replace("_", " "), many.replace("_", " ") or None))
    return out


def _words(items: list[str]) -> list[str]:
    return [w.replace("_", " ") for w in items]


PAST: dict[str, str] = {}
PARTICIPLE: dict[str, str] = {}
for _item in IRREGULAR + DOUBLED:
    _parts = _item.split(":")
    PAST[_parts[0]] = _parts[1]
    PARTICIPLE[_parts[0]] = _parts[2] if len(_parts) > 2 else _parts[1]


def past(verb: str) -> str:
    head, _, rest = verb.partition(" ")
    if head in PAST:
        form = PAST[head]
    elif head.endswith("e"):
        form = head + "d"
    elif head.endswith("y") and head[-2] not in "aeiou":
        form = head[:-1] + "ied"
    else:
        form = head + "ed"
    return f"{form} {rest}".strip()


def participle(verb: str) -> str:
    head, _, rest = verb.partition(" ")
    form = PARTICIPLE.get(head) or past(head)
    return f"{form} {rest}".strip()


def third(verb: str) -> str:
    head, _, rest = verb.partition(" ")
    if head == "have":
        form = "has"
    elif head == "be":
        form = "is"
    elif head.endswith(("s", "sh", "ch", "x", "z", "o")):
        form = head + "es"
    elif head.endswith("y") and head[-2] not in "aeiou":
        form = head[:-1] + "ies"
    else:
        form = head + "s"
    return f"{form} {rest}".strip()


# Transitive verbs by the kind of object they take.
VERBS_FOOD = "peel slice chop boil fry roast grill serve heat freeze mix taste pour eat cook buy bring want cut wash taste share order sell find carry drop prepare bake grow".split()
VERBS_OBJECT = """polish repair replace return deliver mark measure weigh count unpack
collect borrow fetch drag push pull lift shake fill empty cover decorate sort label hang light sharpen
find lose carry buy sell bring clean fix paint move open close drop hide keep lend borrow
break wrap need want send show order pack check hold use build make choose steal throw catch pick_up
put_away look_for""".split()
VERBS_CLOTHING = "wear buy wash lose find fold iron mend choose try_on take_off put_on lend borrow".split()
VERBS_ANIMAL = "rescue tame train pat stroke count feed see watch find chase follow photograph draw hear catch wash brush walk".split()
VERBS_VEHICLE = "drive wash fix sell buy park take catch miss paint stop follow".split()
VERBS_PERSON = "greet warn forgive trust admire email interview congratulate rescue call meet help visit thank invite follow teach tell ask phone hug remember forget see".split()
VERBS_PLACE = "visit leave clean paint reach find explore photograph draw love".split()
INTRANSITIVE = """relax whistle complain jog skate ski cycle paint shop garden knit
sleep laugh smile sing dance run swim cry shout wait rest work read write cook walk
sit_down stand_up wake_up hurry_up calm_down""".split()
MOTION = "walk run drive ride hurry go come travel".split()
ANIMAL_ACTS = "sleep run jump bark sing hide play swim eat rest wait".split()
ANIMAL_SOUNDS = {"dog": "bark", "puppy": "bark", "cat": "purr", "kitten": "purr", "bird": "sing", "owl": "hoot",
                 "duck": "quack", "cow": "moo", "lion": "roar", "tiger": "roar", "horse": "neigh", "sheep": "bleat",
                 "goat": "bleat", "pig": "grunt", "wolf": "howl", "donkey": "bray", "frog": "croak", "bee": "buzz"}
LIKES = "like love enjoy hate prefer".split()
SAY = "said thought knew told me heard wrote".split()


MALE = set("""father brother uncle grandfather son husband nephew stepfather""".split())
FEMALE = set("""mother sister aunt grandmother daughter wife niece godmother""".split())


def pronoun(subject: str) -> str:
    """The pronoun that can stand for ``subject`` later in the sentence ("they" when its sex is unknown)."""
    if subject in ("I", "we", "you", "they", "he", "she"):
        return subject
    last = subject.split()[-1]
    return "he" if last in MALE else "she" if last in FEMALE else "they"


# ---------------------------------------------------------------------------------------------- grammar
class Grammar:
    def __init__(self, seed: int = SEED):
        self.r = random.Random(seed)
        self.food = _pairs(FOOD)
        self.objects = _pairs(OBJECTS)
        self.clothing = _pairs(CLOTHING)
        self.animals = _pairs(ANIMALS)
        self.vehicles = _pairs(VEHICLES)
        self.places = _pairs(PLACES)
        self.occupations = _words(OCCUPATIONS)
        self.cities = _words(CITIES)
        self.templates = [
            (self.t_did_object, 6), (self.t_will, 4), (self.t_question_did, 3), (self.t_request, 4),
            (self.t_describe, 4), (self.t_there_are, 3), (self.t_went_to, 4), (self.t_animal, 4),
            (self.t_weather, 3), (self.t_habit, 4), (self.t_reported, 3), (self.t_because, 3), (self.t_never, 2),
            (self.t_where, 3), (self.t_likes, 3), (self.t_person, 4), (self.t_travel, 3), (self.t_feeling, 3),
            (self.t_if, 2), (self.t_was_ing, 3), (self.t_how_many, 2), (self.t_imperative, 2), (self.t_comparison, 2),
            (self.t_sound, 2), (self.t_wear, 3), (self.t_vehicle, 3),
        ]
        self.weights = [w for _, w in self.templates]

    # --- helpers
    def pick(self, seq):
        return seq[self.r.randrange(len(seq))]

    def maybe(self, p: float) -> bool:
        return self.r.random() < p

    @staticmethod
    def a(word: str) -> str:
        return ("an " if word[0] in "aeiou" and not word.startswith(("uni", "use", "eu")) else "a ") + word

    def person(self, subject: bool = True) -> tuple[str, bool]:
        """(words, is third-person singular)."""
        k = self.r.random()
        if k < 0.35:
            return self.pick(NAMES), True
        if k < 0.6:
            return ("my " if self.maybe(0.7) else self.pick(["our ", "his ", "her ", "your ", "their "])) + \
                self.pick(RELATIVES), True
        if k < 0.8:
            return "the " + self.pick(self.occupations), True
        if subject:
            p = self.pick(["I", "we", "you", "they", "he", "she"])
            return p, p in ("he", "she")
        return self.pick(["me", "us", "them", "him", "her"]), False

    def adjective_for(self, kind: str) -> str:
        if kind == "food":
            return self.pick(TASTES + ["big", "small", "fresh", "cheap", "expensive"])
        if kind in ("object", "clothing", "vehicle"):
            return self.pick(COLORS + SIZES + AGES + GENERAL)
        if kind == "animal":
            return self.pick(COLORS[:8] + SIZES[:6] + ["old", "young", "hungry", "sleepy", "friendly", "wild",
                                                         "noisy", "quiet", "clever", "lazy"])
        if kind == "place":
            return self.pick(["old", "new", "big", "small", "quiet", "busy", "empty", "crowded", "lovely",
                              "famous", "dark", "clean", "cold", "warm"])
        return self.pick(GENERAL)

    def noun_phrase(self, kind: str, plural: bool | None = None, det: str | None = None) -> str:
        pool = {"food": self.food, "object": self.objects, "clothing": self.clothing, "animal": self.animals,
                "vehicle": self.vehicles}[kind]
        one, many = self.pick(pool)
        if plural is None:
            plural = many is not None and self.maybe(0.3)
        noun = many if plural and many else one
        adj = self.adjective_for(kind) + " " if self.maybe(0.45) else ""
        if det is None:
            if many is None:  # a mass noun
                det = self.pick(["the", "some", "the", "more"]) if kind == "food" else "the"
            elif plural:
                det = self.pick(["the", "some", "two", "three", "a few", "those", "these", "my", "our"])
            else:
                det = self.pick(["the", "a", "the", "my", "her", "his", "our", "that", "this", "your"])
        if det == "a":
            return self.a(adj + noun)
        return f"{det} {adj}{noun}"

    def place(self, with_prep: bool = True) -> str:
        name, prep = self.pick(self.places)
        adj = self.adjective_for("place") + " " if self.maybe(0.25) else ""
        return f"{prep} the {adj}{name}" if with_prep else f"the {adj}{name}"

    def verb_object(self) -> tuple[str, str]:
        kind = self.pick(["food", "object", "object", "clothing", "animal", "vehicle", "person", "place"])
        if kind == "person":
            return self.pick(VERBS_PERSON), self.person(subject=False)[0]
        if kind == "place":
            return self.pick(VERBS_PLACE), self.place(with_prep=False)
        verbs = {"food": VERBS_FOOD, "object": VERBS_OBJECT, "clothing": VERBS_CLOTHING, "animal": VERBS_ANIMAL,
                 "vehicle": VERBS_VEHICLE}[kind]
        return self.pick(verbs).replace("_", " "), self.noun_phrase(kind)

    @staticmethod
    def join_verb(verb: str, obj: str) -> str:
        """Put a particle verb's object before its particle when it is short (pick the box up)."""
        head, _, particle = verb.partition(" ")
        if particle in ("up", "away", "on", "off") and len(obj.split()) <= 2:
            return f"{head} {obj} {particle}"
        return f"{verb} {obj}"

    def time(self, which) -> str:
        return self.pick(which).replace("_", " ")

    # --- templates (each returns a sentence without its final punctuation mark, and the mark)
    def t_did_object(self):
        s, _ = self.person()
        verb, obj = self.verb_object()
        head, _, particle = verb.partition(" ")
        vp = self.join_verb(past(head) + (" " + particle if particle else ""), obj)
        tail = ""
        if self.maybe(0.4):
            tail += " " + self.place()
        if self.maybe(0.5):
            tail += " " + self.time(TIMES_PAST)
        return f"{s} {vp}{tail}", "."

    def t_will(self):
        s, _ = self.person()
        verb, obj = self.verb_object()
        modal = self.pick(["will", "will", "can", "should", "must", "might", "is going to", "wants to"])
        if modal in ("is going to", "wants to"):
            if s in ("I",):
                modal = "am going to" if modal == "is going to" else "want to"
            elif s in ("we", "you", "they"):
                modal = "are going to" if modal == "is going to" else "want to"
        tail = " " + self.time(TIMES_FUTURE) if self.maybe(0.6) else ""
        return f"{s} {modal} {self.join_verb(verb, obj)}{tail}", "."

    def t_question_did(self):
        s, _ = self.person()
        verb, obj = self.verb_object()
        aux = self.pick(["Did", "Did", "Will", "Can", "Should", "Could"])
        tail = " " + self.time(TIMES_PAST if aux == "Did" else TIMES_FUTURE) if self.maybe(0.5) else ""
        return f"{aux} {s} {self.join_verb(verb, obj)}{tail}", "?"

    def t_request(self):
        verb, obj = self.verb_object()
        lead = self.pick(["Could you", "Can you", "Would you", "Please", "Could you please", "Will you"])
        tail = ""
        if self.maybe(0.3):
            tail = " " + self.place()
        elif self.maybe(0.4):
            tail = " " + self.pick(["for me", "before dinner", "after lunch", "right now", "today", "tomorrow",
                                    "when you can", "for a moment", "again"])
        mark = "." if lead == "Please" else "?"
        return f"{lead} {self.join_verb(verb, obj)}{tail}", mark

    def t_describe(self):
        kind = self.pick(["food", "object", "clothing", "animal", "vehicle"])
        pool = {"food": self.food, "object": self.objects, "clothing": self.clothing, "animal": self.animals,
                "vehicle": self.vehicles}[kind]
        one, many = self.pick(pool)
        plural = many is not None and self.maybe(0.3)
        noun = many if plural else one
        be = self.pick(["are", "were"]) if plural else self.pick(["is", "was"])
        adv = self.pick(["very ", "too ", "quite ", "really ", "so ", "", "", "rather "])
        tail = " " + self.place() if self.maybe(0.3) else ""
        return f"The {noun}{tail} {be} {adv}{self.adjective_for(kind)}", "."

    def t_there_are(self):
        kind = self.pick(["food", "object", "animal", "vehicle", "clothing"])
        pool = {"food": self.food, "object": self.objects, "clothing": self.clothing, "animal": self.animals,
                "vehicle": self.vehicles}[kind]
        one, many = self.pick([p for p in pool if p[1]])
        n = self.pick(NUMBERS + ["a few", "many", "some", "no"]).replace("_", " ")
        be = self.pick(["are", "were"])
        adj = self.adjective_for(kind) + " " if self.maybe(0.3) else ""
        return f"There {be} {n} {adj}{many} {self.place()}", "."

    def t_went_to(self):
        s, _ = self.person()
        verb, obj = self.verb_object()
        return f"{s} went to the {self.pick(self.places)[0]} {self.time(TIMES_PAST)} to {self.join_verb(verb, obj)}", "."

    def t_animal(self):
        one, many = self.pick(self.animals)
        adj = self.adjective_for("animal") + " " if self.maybe(0.5) else ""
        act = self.pick(ANIMAL_ACTS)
        if self.maybe(0.5):
            return f"The {adj}{one} {past(act)} {self.place()}" + (
                " " + self.time(TIMES_PAST) if self.maybe(0.4) else ""), "."
        return f"The {adj}{many} {self.pick(['like to', 'love to', 'never', 'often', 'always', 'sometimes'])} " \
               f"{act} {self.place()}", "."

    def t_weather(self):
        w = self.pick(WEATHER)
        when = self.time(TIMES_PAST)
        s, _ = self.person()
        act = self.pick(INTRANSITIVE).replace("_", " ")
        joiner = self.pick(["so", "but", "and"])
        return f"It was {w} {when}, {joiner} {s} " \
               f"{past(act)} {self.place()}", "."

    def t_habit(self):
        s, third_person = self.person()
        verb, obj = self.verb_object()
        v = third(verb) if third_person else verb
        if s == "I" or not third_person and s in ("we", "you", "they"):
            v = verb
        adv = self.pick(ADVERBS[10:18]) + " " if self.maybe(0.3) else ""
        return f"{s} {adv}{self.join_verb(v, obj)} {self.time(TIMES_HABIT)}", "."

    def t_reported(self):
        s, _ = self.person()
        say = self.pick(SAY)
        kind = self.pick(["food", "object", "vehicle", "animal", "clothing"])
        pool = {"food": self.food, "object": self.objects, "clothing": self.clothing, "animal": self.animals,
                "vehicle": self.vehicles}[kind]
        one, _ = self.pick(pool)
        return f"{s} {say} that the {one} was {self.adjective_for(kind)}", "."

    def t_because(self):
        s, third_person = self.person()
        verb, obj = self.verb_object()
        pron = pronoun(s)
        be = "were" if pron in ("we", "you", "they") else "was"
        return f"{s} {self.join_verb(past(verb.split()[0]) + ' ' + ' '.join(verb.split()[1:]), obj).replace('  ', ' ')}" \
               f" because {pron} {be} {self.pick(FEELINGS)}", "."

    def t_never(self):
        s, third_person = self.person()
        verb, obj = self.verb_object()
        head, _, particle = verb.partition(" ")
        aux = "has" if third_person else "have"
        vp = self.join_verb(participle(head) + (" " + particle if particle else ""), obj)
        return f"{s} {aux} {self.pick(['never', 'already', 'just', 'often'])} {vp}", "."

    def t_where(self):
        kind = self.pick(["object", "clothing", "food"])
        np_ = self.noun_phrase(kind, det="the")
        form = self.pick(["Where did you put {np}", "Where is {np}", "Who took {np}", "Why is {np} {adj}",
                          "When did you buy {np}", "Have you seen {np}", "Who left {np} {place}"])
        if "is {np}" in form and np_.split()[-1].endswith("s") and not np_.endswith("ss"):
            form = form.replace("is {np}", "are {np}")
        return form.format(np=np_, adj=self.adjective_for(kind), place=self.place()), "?"

    def t_likes(self):
        s, third_person = self.person()
        like = self.pick(LIKES)
        verb, obj = self.verb_object()
        to_form = self.maybe(0.5)
        if to_form and like == "enjoy":
            like = "want"
        like = third(like) if third_person else like
        if to_form:
            return f"{s} {like} to {self.join_verb(verb, obj)}", "."
        kind = self.pick(["food", "animal", "object"])
        pool = {"food": self.food, "object": self.objects, "animal": self.animals}[kind]
        one, many = self.pick(pool)
        return f"{s} {like} {self.adjective_for(kind) + ' ' if self.maybe(0.4) else ''}{many or one}", "."

    def t_person(self):
        s, _ = self.person()
        form = self.pick(["{s} lives in {city}", "{s} moved to {city} {past}", "{s} works {place}",
                          "{s} was born in {city}", "{s} is staying in {city} {fut}", "{s} met {o} {place}",
                          "{s} waited for {o} {place}", "{s} is a {occ}", "{s} wants to become a {occ}"])
        if s in ("I", "we", "you", "they"):
            form = form.replace("lives", "live").replace("works", "work").replace("wants", "want")
            form = form.replace("{s} is", "{s} am" if s == "I" else "{s} are").replace("{s} was", "{s} were") \
                if s != "I" else form.replace("{s} is", "{s} am")
        out = form.format(s=s, city=self.pick(self.cities), past=self.time(TIMES_PAST), place=self.place(),
                          fut=self.time(TIMES_FUTURE), o=self.person(subject=False)[0], occ=self.pick(self.occupations))
        return out.replace(" a a", " an a").replace(" a e", " an e").replace(" a o", " an o"), "."

    def t_travel(self):
        s, _ = self.person()
        how = self.pick(["by train", "by bus", "by car", "by plane", "by boat", "on foot", "by bike"])
        return f"{s} {self.pick(['traveled', 'went', 'flew', 'drove', 'came back', 'returned'])} to " \
               f"{self.pick(self.cities)} {how} {self.time(TIMES_PAST)}", "."

    def t_feeling(self):
        s, third_person = self.person()
        be = ("is" if third_person else "am" if s == "I" else "are") if self.maybe(0.5) else \
            ("was" if third_person or s == "I" else "were")
        reason = self.pick(["after the long day", "about the news", "this morning", "today", "all week",
                            "because of the noise", "before the test", "after the game", "at the party",
                            "when the train was late", "after the trip"])
        return f"{s} {be} {self.pick(['very ', 'so ', 'a bit ', 'really ', ''])}{self.pick(FEELINGS)} {reason}", "."

    def t_if(self):
        w = self.pick(["rains", "snows", "is sunny", "is cold", "gets dark", "is windy"])
        s = self.pick(["we", "I", "you", "they"])
        verb, obj = self.verb_object()
        return f"If it {w} {self.time(['tomorrow', 'tonight', 'this afternoon', 'on Sunday', 'next week'])}, " \
               f"{s} will {self.join_verb(verb, obj)}", "."

    def t_was_ing(self):
        s, third_person = self.person()
        be = "was" if third_person or s == "I" else "were"
        act = self.pick(["reading a book", "cooking dinner", "washing the dishes", "watching television",
                         "sleeping", "working", "waiting for the bus", "talking on the phone", "writing a letter",
                         "cleaning the house", "playing the piano", "walking the dog", "painting the fence",
                         "listening to the radio", "making tea", "doing homework", "fixing the car",
                         "feeding the cat", "singing a song", "baking bread"])
        when = self.pick(["when the phone rang", "when we arrived", "when it started to rain",
                          "when the lights went out", "all afternoon", "at eight o'clock", "when I called"])
        return f"{s} {be} {act} {when}", "."

    def t_how_many(self):
        kind = self.pick(["food", "object", "animal"])
        pool = {"food": self.food, "object": self.objects, "animal": self.animals}[kind]
        _, many = self.pick([p for p in pool if p[1]])
        s, _ = self.person()
        verb = {"food": self.pick(["buy", "eat", "bring", "want", "cook"]),
                "object": self.pick(["buy", "find", "need", "bring", "sell"]),
                "animal": self.pick(["see", "feed", "count", "find"])}[kind]
        return f"How many {many} did {s} {verb} {self.time(TIMES_PAST)}", "?"

    def t_imperative(self):
        verb, obj = self.verb_object()
        lead = self.pick(["Don't forget to", "Remember to", "Try to", "Never", "Don't", "Let's"])
        return f"{lead} {self.join_verb(verb, obj)}" + (" " + self.time(TIMES_FUTURE) if self.maybe(0.4) else ""), "."

    def t_comparison(self):
        kind = self.pick(["food", "object", "animal", "vehicle"])
        pool = {"food": self.food, "object": self.objects, "animal": self.animals, "vehicle": self.vehicles}[kind]
        (a, _), (b, _) = self.pick(pool), self.pick(pool)
        if a == b:
            b = "last one"
        adj = self.pick(["bigger", "smaller", "older", "heavier", "cheaper", "nicer", "better", "faster", "softer",
                         "darker", "longer", "cleaner", "quieter", "sweeter"])
        return f"The {a} is {adj} than the {b}", "."

    def t_sound(self):
        animal = self.pick(sorted(ANIMAL_SOUNDS))
        sound = ANIMAL_SOUNDS[animal]
        return f"We heard the {animal} {sound} {self.place()} {self.time(TIMES_PAST)}", "."

    def t_wear(self):
        s, third_person = self.person()
        one, many = self.pick(self.clothing)
        item = self.a(self.adjective_for("clothing") + " " + one) if self.maybe(0.5) else \
            f"{self.pick(['a', 'her', 'his', 'my', 'the'])} {one}".replace("a a", "an a")
        if item.startswith("a ") and item[2] in "aeiou":
            item = "an " + item[2:]
        return f"{s} {self.pick(['wore', 'bought', 'lost', 'found', 'washed'])} {item} " \
               f"{self.pick(['to the party', 'to work', 'to school', 'at the wedding', 'yesterday', 'last week', 'in the rain'])}", "."

    def t_vehicle(self):
        s, _ = self.person()
        one, _ = self.pick(self.vehicles)
        form = self.pick(["{s} missed the {v} {past}", "The {v} was late {past}", "{s} parked the {v} {place}",
                          "The {v} stopped {place}", "{s} waited for the {v} {place}", "The {v} broke down {past}"])
        return form.format(s=s, v=one, past=self.time(TIMES_PAST), place=self.place()), "."

    # --- one sentence
    def sentence(self) -> str:
        template = self.r.choices(self.templates, weights=self.weights)[0][0]
        body, mark = template()
        body = re.sub(r"\s+", " ", body).strip()
        body = body[0].upper() + body[1:]
        return body + mark


def key(sentence: str) -> str:
    """What "the same sentence" means for the split: lower case, letters, digits and single spaces only."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", sentence.lower()).split())


def generate(total: int = TOTAL, seed: int = SEED) -> list[str]:
    g = Grammar(seed)
    seen: set[str] = set()
    out: list[str] = []
    attempts = 0
    while len(out) < total:
        attempts += 1
        if attempts > total * 50:
            raise RuntimeError(f"the grammar made only {len(out)} distinct sentences in {attempts} tries")
        s = g.sentence()
        n = len(s.split())
        k = key(s)
        if not MIN_WORDS <= n <= MAX_WORDS or k in seen:
            continue
        seen.add(k)
        out.append(s)
    return out


def split(sentences: list[str], test_size: int = TEST_SIZE, seed: int = SEED) -> tuple[list[str], list[str]]:
    order = list(sentences)
    random.Random(seed + 1).shuffle(order)
    return order[test_size:], order[:test_size]


def make(total: int = TOTAL, seed: int = SEED) -> dict[str, list[str]]:
    train, test = split(generate(total, seed), TEST_SIZE, seed)
    return {"train": train, "test": test}


def read_split(name: str, folder: Path = TEXT_DIR) -> list[str]:
    return [line for line in (folder / f"{name}.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=TEXT_DIR, help="folder for train.txt and test.txt")
    ap.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = ap.parse_args(argv)
    splits = make()
    if args.check:
        bad = [n for n, lines in splits.items()
               if not (args.out / f"{n}.txt").is_file() or read_split(n, args.out) != lines]
        if bad:
            print(f"mini_text: {', '.join(bad)} differ from what the grammar makes; rerun without --check",
                  file=sys.stderr)
            return 1
        print("mini_text: the shipped text matches the grammar")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, lines in splits.items():
        (args.out / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    words = {w for lines in splits.values() for s in lines for w in key(s).split()}
    print(f"mini_text: {len(splits['train'])} train + {len(splits['test'])} test sentences, "
          f"{len(words)} distinct words -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
