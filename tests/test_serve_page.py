"""The server's page in a real headless browser (Debian's chromium + chromedriver, through
Selenium): it loads, takes an image, asks, and draws the answer's box where its coordinates say
(checked in the DOM and in the screenshot's pixels); dragging a rectangle writes that region into
the question. `BIRD_JAX_SCREENSHOT=docs/images/serve.png` also saves the screenshot there (the
one in docs/chat.md)."""

from __future__ import annotations

import io
import os
import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from scripted import ANSWER, ANSWER_BOXES, running_server, scripted_model
from bird_jax.assistant import Assistant
from bird_jax.boxes import parse_boxes
from bird_jax.draw import PREDICTED, QUESTION
from bird_jax.serve.app import create_app
from bird_jax.serve.batcher import Batcher
from bird_jax.tokenizer import load_tokenizer

pytestmark = [pytest.mark.needs_browser, pytest.mark.heavy]  # conftest: on PATH, or skipped


@pytest.fixture(scope="module")
def url(tiny_cfg):
  tok = load_tokenizer(tiny_cfg)
  bot = Assistant(scripted_model(tiny_cfg, tok), tok, tiny_cfg, name="tiny-scripted",
                  max_new_tokens=32)
  batcher = Batcher(bot)
  with running_server(create_app(bot, batcher)) as base:
    yield base
  batcher.close()


@pytest.fixture(scope="module")
def browser():
  from selenium import webdriver

  opts = webdriver.ChromeOptions()
  opts.binary_location = shutil.which("chromium")
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1100,760", "--force-device-scale-factor=1"):
    opts.add_argument(arg)
  service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
  driver = webdriver.Chrome(options=opts, service=service)
  yield driver
  driver.quit()


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
  """A phantom CT slice (datagen's offline source), 320 x 320."""
  from datagen.sources.phantom import PhantomSource

  src = PhantomSource(image_size=320, num_images=8, modalities=("ct",))
  refs = [r for r in src.refs(Counter()) if r.slice == src.slices // 2]
  path = tmp_path_factory.mktemp("page") / "ct_phantom.png"
  path.write_bytes(src.image_bytes(refs[0]))
  return path


def client_rect(driver, selector: str) -> dict:
  return driver.execute_script(
      "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
      "return {left: r.left, top: r.top, width: r.width, height: r.height};", selector)


def expected_rect(image: dict, box) -> dict:
  x1, y1, x2, y2 = (v / 1000 for v in box)
  return {"left": image["left"] + x1 * image["width"], "top": image["top"] + y1 * image["height"],
          "width": (x2 - x1) * image["width"], "height": (y2 - y1) * image["height"]}


def near(color, want, tol=40) -> bool:
  return all(abs(int(c) - w) <= tol for c, w in zip(color[:3], want))


def ask(driver, question: str, n_answers: int) -> None:
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  box = driver.find_element(By.ID, "question")
  if question:
    box.send_keys(question)
  driver.find_element(By.ID, "send").click()
  WebDriverWait(driver, 120).until(
      lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li.assistant")) == n_answers
      or d.find_element(By.ID, "status").text.strip() not in ("", "thinking..."))
  assert driver.find_element(By.ID, "status").text.strip() == ""


def test_the_page_asks_and_draws_the_answer_box_where_its_coordinates_say(url, browser, scan):
  from selenium.webdriver.common.action_chains import ActionChains
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  d = browser
  d.get(url)
  WebDriverWait(d, 30).until(lambda d: d.execute_script("return document.body.dataset.ready"))
  assert d.find_element(By.ID, "model").text == "tiny-scripted"
  d.find_element(By.ID, "file").send_keys(str(scan))
  WebDriverWait(d, 30).until(lambda d: d.execute_script(
      "const i = document.getElementById('image'); return i.complete && i.naturalWidth > 0"))

  ask(d, "Where is the lung?", 1)
  answers = d.find_elements(By.CSS_SELECTOR, "#history li.assistant")
  assert answers[-1].text.endswith(ANSWER)
  image = client_rect(d, "#image")
  assert image["width"] == 480 and image["height"] == 480
  drawn = client_rect(d, "#overlay rect.answer")
  want = expected_rect(image, ANSWER_BOXES[0]["box"])
  assert all(abs(drawn[k] - want[k]) <= 1.0 for k in want), (drawn, want)
  shot = np.asarray(Image.open(io.BytesIO(d.get_screenshot_as_png())).convert("RGB"))
  mid_y = round(want["top"] + want["height"] / 2)
  assert near(shot[mid_y, round(want["left"])], PREDICTED)  # the left edge, in the gallery's red
  assert near(shot[mid_y, round(want["left"] + want["width"])], PREDICTED)
  assert d.find_element(By.CSS_SELECTOR, "#overlay text").text == ANSWER_BOXES[0]["ref"]

  # drag from 25 % / 20 % to 75 % / 60 % of the image: that region lands in the question
  overlay = d.find_element(By.ID, "overlay")
  w, h = image["width"], image["height"]
  (ActionChains(d).move_to_element_with_offset(overlay, round(-0.25 * w), round(-0.30 * h))
   .click_and_hold().move_by_offset(round(0.25 * w), round(0.2 * h))
   .move_by_offset(round(0.25 * w), round(0.2 * h)).release().perform())
  question = d.find_element(By.ID, "question").get_attribute("value")
  typed = parse_boxes(question).boxes
  assert len(typed) == 1 and question.startswith("What is the object at <box>")
  assert all(abs(a - b) <= 3 for a, b in zip(typed[0].coords, (250, 200, 750, 600))), question
  ask(d, "", 2)
  region = client_rect(d, "#overlay rect.question")
  want = expected_rect(image, typed[0].coords)
  assert all(abs(region[k] - want[k]) <= 1.0 for k in want), (region, want)
  shot = d.get_screenshot_as_png()
  arr = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
  assert near(arr[round(want["top"] + want["height"] / 2), round(want["left"])], QUESTION)
  if os.environ.get("BIRD_JAX_SCREENSHOT"):
    Image.open(io.BytesIO(shot)).convert("RGB").quantize(64).save(
        os.environ["BIRD_JAX_SCREENSHOT"], optimize=True)
