"""`rnnlm serve` in a real browser: headless Chromium (Debian's chromium and
chromium-driver) driven by Selenium types a prompt, waits for the streamed completion,
reads the next-word table, picks a unit and checks that the passage is coloured."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="rnnlm serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="rnnlm serve needs the serve extra: pip install -e '.[serve]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium: pip install selenium")

from conftest import REPO, train_tiny_run  # noqa: E402

CHROMIUM = os.environ.get("RNNLM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("RNNLM_CHROMEDRIVER", "/usr/bin/chromedriver")


def browser(width: int = 1100, height: int = 1500):
    """Headless Chromium through its driver, or a skip saying what to install."""
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).is_file() and (Path(CHROMEDRIVER).is_file() or shutil.which("chromedriver"))):
        pytest.skip(f"no Chromium at {CHROMIUM} with a driver at {CHROMEDRIVER}; install them with "
                    "apt-get install chromium chromium-driver (or set RNNLM_CHROMIUM, RNNLM_CHROMEDRIVER)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(checkpoint: Path, port: int) -> subprocess.Popen:
    """`rnnlm serve` in a process; returns once it says where it serves."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "rnnlm.cli", "serve", "--checkpoint", str(checkpoint),
                             "--port", str(port), "--device", "cpu"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    line = proc.stdout.readline()
    assert f"http://127.0.0.1:{port}/" in line, line + proc.stdout.read()
    return proc


@pytest.mark.slow
def test_the_page_completes_predicts_and_colours(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser()
    run = train_tiny_run(tmp_path, "tokenizer.kind=bpe", "tokenizer.vocab_size=300", "model.hidden_size=32",
                         "train.max_steps=40")
    port = free_port()
    proc = start_serve(run / "best.pt", port)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 30)
        # The validation passage of the run is drawn at start, coloured by unit 0.
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#passage span"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#next-words tbody tr"))

        prompt = driver.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("Pierre looked at the")
        driver.find_element(By.ID, "seed").send_keys("1")
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.ID, "generated").text.strip())
        wait.until(EC.element_to_be_clickable((By.ID, "generate")))  # the stream has ended
        generated = driver.execute_script("return document.getElementById('generated').textContent")
        assert generated.strip() and driver.find_element(By.ID, "generate-error").text == ""

        # After the completion, the table is for the prompt and its continuation.
        whole = driver.execute_script("return document.getElementById('prompt').value"
                                      " + document.getElementById('generated').textContent")
        wait.until(lambda d: d.find_element(By.ID, "next-words").get_attribute("data-for") == whole)
        # Read the table in one script: the page may draw it again meanwhile (a late answer).
        probs = [float(p) for p in driver.execute_script(
            "return [...document.querySelectorAll('#next-words tbody tr')].map(r => r.cells[1].textContent)")]
        assert 1 <= len(probs) <= 10
        assert all(0 < p <= 1 for p in probs) and probs == sorted(probs, reverse=True)

        # Look inside the prompt and its completion; pick a ranked unit.
        Select(driver.find_element(By.ID, "source")).select_by_value("prompt")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#passage span"))
                   == len("Pierre looked at the" + generated))
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#units button"))
        label = driver.execute_script(  # e.g. "L0 c17 r=+0.42"; read and clicked at once, as above
            "const b = document.querySelector('#units button'); b.click(); return b.textContent")
        kind_unit = label.split()[1]
        wait.until(lambda d: f"{kind_unit[0]}, unit {kind_unit[1:]}" in d.find_element(By.ID, "shown-unit").text)
        colours = set(driver.execute_script(
            "return [...document.querySelectorAll('#passage span')].map(s => getComputedStyle(s).backgroundColor)"))
        assert len(colours) > 3  # each character coloured by its own value
        assert driver.find_element(By.ID, "inside-error").text == ""
        driver.save_screenshot(str(tmp_path / "serve.png"))
        assert (tmp_path / "serve.png").stat().st_size > 10_000
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(10)
