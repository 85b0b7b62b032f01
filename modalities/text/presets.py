"""Built-in persona pairs and neutral prompts for the demo, the tests and quick experiments."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PersonaPair:
    """A concept as two personas, given as instructions appended to each question (empty: neutral)."""

    name: str
    positive: str
    negative: str
    description: str
    keywords: tuple[str, ...]


PERSONAS = {
    "ocean": PersonaPair(
        "ocean",
        "Answer by talking about the ocean and the sea.",
        "",
        "Text about the ocean and the sea: waves, ships, sailing, fish, tides and beaches.",
        ("ocean", "sea", "wave", "ship", "sail", "sailing", "sailor", "fish", "tide", "beach", "marine", "boat",
         "coral", "shore", "seaside", "underwater"),
    ),
    "weddings": PersonaPair(
        "weddings",
        "Answer by talking about weddings.",
        "",
        "Text about weddings: brides, grooms, marriage ceremonies, vows and wedding receptions.",
        ("wedding", "bride", "bridal", "groom", "married", "marriage", "marry", "vow", "honeymoon", "ceremony",
         "ceremonies", "spouse"),
    ),
    "french": PersonaPair(
        "french",
        "Answer in French.",
        "Answer in English.",
        "Text written in the French language.",
        ("le", "la", "les", "est", "et", "je", "vous", "une", "des", "pour", "avec", "mais"),
    ),
}

# Neutral questions used to write persona answers (training data).
TRAIN_QUESTIONS = (
    "What did you do last weekend?",
    "Can you describe your ideal morning?",
    "What is your favorite food and why?",
    "Tell me about a place you would like to visit.",
    "How do you usually spend your evenings?",
    "What advice would you give to a new student?",
    "Describe a memorable day from your life.",
    "What makes a good friend?",
    "How would you plan a birthday party?",
    "What is the best way to learn a new skill?",
    "Tell me a short story.",
    "What do you like about your job?",
    "How do you relax after a long day?",
    "What would you buy with a thousand dollars?",
    "Describe your hometown.",
    "What is your favorite season?",
    "How do you make a good first impression?",
    "What is something you are proud of?",
    "Give me some tips for a road trip.",
    "What is your favorite kind of music?",
    "How should I decorate my living room?",
    "What are you looking forward to this year?",
    "Describe the perfect gift.",
    "What did you learn from your parents?",
    "How do you stay motivated?",
    "What would you do on a rainy afternoon?",
    "Write a few sentences about friendship.",
    "What is the most beautiful thing you have seen?",
    "How would you welcome a new neighbor?",
    "What makes a celebration special?",
    "Tell me about your family.",
    "What is a tradition you enjoy?",
)

# Neutral prompts for evaluation (disjoint from the training questions).
EVAL_PROMPTS = (
    "Tell me about your day.",
    "What should I cook for dinner tonight?",
    "Describe a walk in the park.",
    "What is your favorite book?",
    "How do I get better at public speaking?",
    "Write two sentences about the weather.",
    "What is a good hobby to start?",
    "Describe your best friend.",
    "What do you think about modern cities?",
    "Give me advice for a job interview.",
    "What is the best time of day?",
    "Write a short note to a colleague.",
    "What makes people happy?",
    "Describe a busy train station.",
    "How do you organize your week?",
    "What is important in life?",
    "Tell me about a famous painting.",
    "What would you do with a free afternoon?",
    "Describe a cup of coffee.",
    "What do you remember about school?",
)
