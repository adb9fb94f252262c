# The all-in-one presence server (dispatcher, one subscription manager and
# billing in one process, on the embedded SQLite database):
#   docker build -t presence .
#   docker run -d --name presence -p 5060:5060/udp -p 5060:5060/tcp \
#       -v presence-data:/var/lib/presence \
#       -v "$PWD/presence.ini:/etc/presence/presence.ini:ro" presence
# Arguments after the image name replace the default CMD: they are
# `twistd presence` options (e.g. --domain example.org).
FROM python:3.11-slim-bookworm

RUN useradd --system --home-dir /var/lib/presence --create-home \
        --shell /usr/sbin/nologin presence

# What `pip install .` needs, and nothing else of the tree.
COPY pyproject.toml setup.cfg README.rst LICENSE /src/
COPY presence /src/presence
COPY twisted /src/twisted
RUN pip install --no-cache-dir /src && rm -rf /src

COPY etc/presence.ini /etc/presence/presence.ini

USER presence
# The sample configuration's database is sqlite:///presence.sqlite,
# relative to the working directory: the volume keeps it.
WORKDIR /var/lib/presence
VOLUME /var/lib/presence
EXPOSE 5060/udp 5060/tcp

# twistd in the foreground as PID 1: SIGTERM (docker stop) commits and
# answers the requests taken, then exits.  Files it creates are private;
# no presence-shutdown.tap (it would hold secrets).
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "--umask=0077", "--no_save", "presence"]
CMD ["--config", "/etc/presence/presence.ini"]
