"""The `openai` Python package against `flint serve` (run by tests/serve.rs with FLINT_URL and
FLINT_KEY set): chat, streaming, n=4 greedy branches, completions, and errors raised as the
package's exception types. Exits non-zero on the first failed check."""

import os
import sys

import openai

client = openai.OpenAI(base_url=os.environ["FLINT_URL"], api_key=os.environ["FLINT_KEY"], max_retries=0)
model = client.models.list().data[0].id


def check(ok, what):
    if not ok:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


msgs = [{"role": "user", "content": "ab bc"}]
one = client.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0, logprobs=True)
check(one.object == "chat.completion", "a chat completion object")
text = one.choices[0].message.content
check(isinstance(text, str), "the message has text")
check(one.usage.completion_tokens == len(one.choices[0].logprobs.content), "one log-probability per token")

four = client.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0, n=4)
check(len(four.choices) == 4, "four choices")
for c in four.choices:
    check(c.message.content == text, f"choice {c.index} equals the greedy answer: {c.message.content!r} vs {text!r}")

parts = []
finish = []
for chunk in client.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0, stream=True):
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
        if c.finish_reason:
            finish.append(c.finish_reason)
check("".join(parts) == text, f"the stream's text {''.join(parts)!r} equals {text!r}")
check(len(finish) == 1, "one finish reason in the stream")

done = client.completions.create(model=model, prompt="ab", max_tokens=8, temperature=0)
check(done.object == "text_completion" and isinstance(done.choices[0].text, str), "a text completion")

try:
    client.chat.completions.create(model=model, messages=msgs, max_tokens=24, n=0)
    check(False, "n=0 is refused")
except openai.BadRequestError as e:
    check(e.status_code == 400, "a 400")

try:
    openai.OpenAI(base_url=os.environ["FLINT_URL"], api_key="wrong", max_retries=0).models.list()
    check(False, "a wrong key is refused")
except openai.AuthenticationError as e:
    check(e.status_code == 401, "a 401")

print("openai client: all checks passed")
