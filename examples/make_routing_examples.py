"""Writes examples/routing.jsonl: forgetless's own small routing set (written by the project, no third-party text).

Three styles per route, used as `source` so validation holds out a whole style at a time.
Run: python examples/make_routing_examples.py
"""
import json
from pathlib import Path

EX = {
    "legal": {
        "question": [
            "Is a verbal agreement legally binding if nothing was signed?",
            "Can my landlord keep the security deposit for normal wear and tear?",
            "What is the difference between a warranty and an indemnity in a contract?",
            "Does a non-compete clause hold up if I move to another state?",
            "How long do I have to file a breach of contract claim?",
            "Who owns the intellectual property an employee creates on weekends?",
            "Is an arbitration clause enforceable against a consumer?",
            "What makes a liquidated damages clause a penalty?",
        ],
        "task": [
            "Draft a confidentiality clause for a consulting agreement between two companies.",
            "Summarise the termination rights of each party in this lease.",
            "Rewrite this indemnification provision so it is mutual rather than one-sided.",
            "List the conditions precedent in the attached share purchase agreement.",
            "Explain the governing law and jurisdiction section of this licence in plain English.",
            "Identify any clauses in this NDA that survive termination.",
            "Prepare a cease and desist letter for trademark infringement.",
            "Check whether this assignment clause requires the other party's consent.",
        ],
        "chat": [
            "my employer wants me to sign an NDA, anything I should watch out for",
            "got sued in small claims court, what happens next",
            "the contractor walked off the job, can I sue for damages",
            "is it legal to record a phone call without telling the other person",
            "tenant stopped paying rent, how does eviction work",
            "what does force majeure mean in my supplier contract",
            "can a will be challenged after probate",
            "do I need a lawyer to register a trademark",
        ],
    },
    "medical": {
        "question": [
            "What are the early warning signs of a stroke?",
            "How does metformin lower blood sugar in type 2 diabetes?",
            "What is the normal resting heart rate for adults?",
            "Which vaccines are recommended for adults over 65?",
            "What causes iron deficiency anaemia?",
            "How is community-acquired pneumonia treated in outpatients?",
            "What are the side effects of long-term corticosteroid use?",
            "When should a fever in an infant be seen by a doctor?",
        ],
        "task": [
            "Explain the difference between type 1 and type 2 diabetes to a newly diagnosed patient.",
            "Summarise the first-line treatment options for hypertension.",
            "Describe the stages of wound healing.",
            "List the contraindications for an MRI scan.",
            "Write patient discharge instructions after a knee arthroscopy.",
            "Outline the diagnostic criteria for major depressive disorder.",
            "Describe how ACE inhibitors work and their common adverse effects.",
            "Explain what a high troponin level indicates.",
        ],
        "chat": [
            "i have had a headache for three days and ibuprofen is not helping",
            "is it safe to take paracetamol with antibiotics",
            "my blood pressure reading was 150 over 95, should I worry",
            "sore throat and swollen glands, is this strep",
            "how much vitamin D should I take daily",
            "rash after starting amoxicillin, what should I do",
            "can you get the flu shot while pregnant",
            "chest feels tight when I climb stairs",
        ],
    },
    "code": {
        "question": [
            "How do I reverse a linked list in Python without recursion?",
            "What is the difference between a process and a thread?",
            "Why does my JavaScript promise never resolve?",
            "How can I read a large CSV file in chunks with pandas?",
            "What does the volatile keyword do in Java?",
            "How do I undo the last git commit but keep my changes?",
            "What is the time complexity of inserting into a binary heap?",
            "How do I set up a virtual environment for a Python project?",
        ],
        "task": [
            "Write a Python function that checks whether a string is a palindrome.",
            "Implement binary search over a sorted list of integers in Go.",
            "Fix this SQL query so it returns one row per customer with their latest order.",
            "Refactor this class to use dependency injection.",
            "Write a bash script that deletes log files older than seven days.",
            "Add unit tests for this function that parses dates.",
            "Convert this callback-based Node.js code to async/await.",
            "Write a Rust function that counts word frequencies in a text.",
        ],
        "chat": [
            "getting KeyError when I access my dict, help",
            "segfault in my C program when freeing memory",
            "docker container exits immediately after starting",
            "my regex doesn't match email addresses with plus signs",
            "pip install fails with a compiler error",
            "react component re-renders forever",
            "null pointer exception in my spring controller",
            "how to merge two sorted arrays in place",
        ],
    },
    "math": {
        "question": [
            "What is the derivative of x squared times sine of x?",
            "How many ways can 5 people be seated around a round table?",
            "What is the sum of the interior angles of a hexagon?",
            "If a train travels 240 km in 3 hours, what is its average speed?",
            "What is the probability of rolling two sixes with two dice?",
            "Is 221 a prime number?",
            "What is the integral of 1 over x from 1 to e?",
            "How do you find the inverse of a 2 by 2 matrix?",
        ],
        "task": [
            "Solve the system of equations 2x + 3y = 12 and x - y = 1.",
            "Prove that the square root of 2 is irrational.",
            "Find the roots of the quadratic 3x^2 - 5x + 2 = 0.",
            "Compute the limit of (1 + 1/n)^n as n goes to infinity.",
            "Simplify the expression (x^2 - 9)/(x - 3).",
            "Calculate the area of a circle with a radius of 7 cm.",
            "Show that the sum of the first n odd numbers is n squared.",
            "Find the eigenvalues of the matrix [[2, 1], [1, 2]].",
        ],
        "chat": [
            "Sara has 3 times as many marbles as Tom, together they have 48, how many does Tom have",
            "what's 15 percent of 240",
            "a rectangle is 8 by 5, what's the diagonal",
            "if I save 50 a week how many weeks to reach 1300",
            "convert 3/8 to a decimal",
            "what is the lcm of 12 and 18",
            "John buys 4 pens at 2.50 each and pays with a 20, how much change",
            "half of a number plus 7 equals 19, what's the number",
        ],
    },
    "finance": {
        "question": [
            "What is the difference between a Roth IRA and a traditional IRA?",
            "How is free cash flow calculated from the cash flow statement?",
            "What does a company's price-to-earnings ratio tell investors?",
            "How does straight-line depreciation affect net income?",
            "Why would a bond's price fall when interest rates rise?",
            "What is the difference between gross margin and operating margin?",
            "How are deferred tax liabilities created?",
            "What does EBITDA exclude and why do analysts use it?",
        ],
        "task": [
            "Prepare the journal entry for prepaid insurance at the end of the month.",
            "Calculate the net present value of these cash flows at an 8% discount rate.",
            "Summarise the revenue and operating income trends in this annual report table.",
            "Explain how to reconcile a bank statement with the cash ledger.",
            "Compute the current ratio and quick ratio from this balance sheet.",
            "Build a simple monthly budget for a household with 4,000 in income.",
            "Explain the accounting treatment of a finance lease under IFRS 16.",
            "Estimate the weighted average cost of capital for this company.",
        ],
        "chat": [
            "my card payment was declined but the money left my account",
            "how do I dispute a charge on my credit card",
            "the transfer to my savings account still hasn't arrived",
            "can I get a refund on an international wire fee",
            "why was I charged interest if I paid the minimum",
            "how do I increase my overdraft limit",
            "is it better to pay off my loan early or invest",
            "what fees apply when I exchange currency with my debit card",
        ],
    },
    "general": {
        "question": [
            "Who wrote the novel Pride and Prejudice?",
            "What is the capital city of Australia?",
            "How many moons does Mars have?",
            "When did the Berlin Wall fall?",
            "What language is spoken in Brazil?",
            "Which planet is known as the red planet?",
            "Who painted the Mona Lisa?",
            "What is the tallest mountain in Africa?",
        ],
        "task": [
            "Write a short birthday message for my grandmother.",
            "Suggest five names for a golden retriever puppy.",
            "Write a haiku about autumn leaves.",
            "Give me a packing list for a weekend camping trip.",
            "Draft a friendly email inviting my team to a picnic on Friday.",
            "Recommend three books for someone who loved The Hobbit.",
            "Plan a three-day itinerary for a first visit to Rome.",
            "Write a thank-you note to a neighbour who watered my plants.",
        ],
        "chat": [
            "hey, how are you doing today",
            "tell me a joke about penguins",
            "what should I cook for dinner tonight",
            "set a reminder to call mom at six",
            "what's the weather usually like in Lisbon in May",
            "I'm bored, any ideas for the weekend",
            "how long should I boil an egg",
            "play some relaxing music",
        ],
    },
}

out = Path(__file__).with_name("routing.jsonl")
with out.open("w") as fh:
    for label, styles in EX.items():
        for style, texts in styles.items():
            for text in texts:
                fh.write(json.dumps({"text": text, "label": label, "source": f"forgetless/{style}"}) + "\n")
print(f"wrote {out}")
