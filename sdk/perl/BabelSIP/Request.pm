package BabelSIP::Request;
# What a Perl route sees: the request ($req), the reply of on_failure /
# on_reply ($reply, BabelSIP::Reply) and the host's services: the store
# ($req->store), the registrar's bindings ($req->registrar) and the dialog
# profiles ($req->dialog).
#
# Verbs only *record* calls; the session sends them as one decision message
# when the hook returns, and the host validates them against its verb table
# (host/routes/verbs.py). The checks here are the cheap ones that give the
# script an error at the line that made it: a second decision, a verb in a
# hook that does not allow it. Arguments are coerced to what the wire wants
# (codes and timeouts to numbers, names and values to strings), so Perl's
# loose scalars cannot send "486" where the host expects 486.
use strict;
use warnings;
use Carp ();
use BabelSIP ();

# Which hooks may call which verb: mirrors host/routes/verbs.py VERBS.
my %ALLOWED = (
    reply         => [qw(on_request on_failure)],
    relay         => [qw(on_request on_failure)],
    redirect      => [qw(on_request on_failure)],
    drop          => [qw(on_request on_reply)],
    set_ruri      => [qw(on_request on_failure)],
    set_header    => [qw(on_request on_failure on_reply)],
    add_header    => [qw(on_request on_failure on_reply)],
    remove_header => [qw(on_request on_failure on_reply)],
    record_route  => [qw(on_request)],
    authenticate  => [qw(on_request)],
    save          => [qw(on_request)],
    lookup        => [qw(on_request on_failure)],
    fix_contact   => [qw(on_request on_reply)],
    limit_duration => [qw(on_request)],
    add_profile   => [qw(on_request)],
);
my %ALLOWED_IN = map { my $v = $_; ($v => { map { $_ => 1 } @{ $ALLOWED{$v} } }) } keys %ALLOWED;
my %DECISION = map { $_ => 1 } qw(reply relay redirect drop save lookup);

sub new {
    my ($class, $id, $hook, $event, $session) = @_;
    return bless { id => $id, hook => $hook, ev => $event, session => $session,
                   verbs => [], decided => undef }, $class;
}

# -- event fields (PROTOCOL.md §6): strings default to '', numbers to 0 --------
for my $field (qw(method ruri ruri_user ruri_host from_uri from_tag to_uri to_tag
                  call_id source_ip transport body auth_user)) {
    no strict 'refs';
    *{$field} = sub { $_[0]{ev}{$field} // '' };
}
for my $field (qw(cseq source_port)) {
    no strict 'refs';
    *{$field} = sub { $_[0]{ev}{$field} // 0 };
}
sub in_dialog  { $_[0]{ev}{in_dialog} ? 1 : 0 }
sub ruri_local { $_[0]{ev}{ruri_local} ? 1 : 0 }
sub hook      { $_[0]{hook} }
sub id        { $_[0]{id} }
sub event     { $_[0]{ev} }

# The first value of a header (name compared case-insensitively), or undef.
sub header {
    my ($self, $name) = @_;
    return _first($self->{ev}{headers}, $name);
}

# All values of a header, as a list; without a name, every [name, value] pair.
sub headers {
    my ($self, $name) = @_;
    return _all($self->{ev}{headers}, $name);
}

# The per-call variables: a hash reference the script may change; what it
# holds at the end of the handler comes back in later events of the call.
sub vars {
    my ($self) = @_;
    unless (exists $self->{vars0}) {
        my $v = $self->{ev}{vars};
        $v = $self->{ev}{vars} = {} unless ref $v eq 'HASH';
        $self->{vars0} = %$v ? BabelSIP::canonical($v) : '';
    }
    return $self->{ev}{vars};
}

# The reply an on_failure / on_reply hook is about (also its second argument).
sub reply_info {
    my ($self) = @_;
    my $r = $self->{ev}{reply};
    return ref $r eq 'HASH' ? BabelSIP::Reply->new($r) : undef;
}

sub store     { BabelSIP::Store->new($_[0]{session}, $_[0]{id}) }
sub registrar { BabelSIP::Registrar->new($_[0]{session}, $_[0]{id}) }
sub dialog    { BabelSIP::Dialog->new($_[0]{session}, $_[0]{id}) }

# $req->log($message, $level): like BabelSIP::log, tagged with this event.
sub log {
    my ($self, $message, $level) = @_;
    $self->{session}->log_line("$message", $level // 'info', $self->{id}) if $self->{session};
    return;
}

# -- verbs ----------------------------------------------------------------------
sub _verb {
    my ($self, $name, @args) = @_;
    Carp::croak("$name() is not allowed in $self->{hook}")
        unless $ALLOWED_IN{$name}{ $self->{hook} };
    if ($DECISION{$name}) {
        Carp::croak("$name(): this event already has a decision ($self->{decided})")
            if $self->{decided};
        $self->{decided} = $name;
    }
    push @{ $self->{verbs} }, [$name, @args];
    return;
}

# reply($code, $reason?, $headers?) - headers: [[name, value], ...] (kept in
# order) or { name => value } (sent sorted by name).
sub reply {
    my ($self, $code, $reason, $headers) = @_;
    my @args = (0 + ($code // 0));
    push @args, (defined $reason ? "$reason" : undef) if defined $reason || defined $headers;
    push @args, _pairs($headers) if defined $headers;
    $self->_verb('reply', @args);
}

# relay(), relay($uri), relay([$uri, ...]), relay($targets, mode => 'serial',
# timeout => 5) or relay($targets, { mode => ..., timeout => ... }).
sub relay {
    my ($self, $targets, @rest) = @_;
    my %opts = @rest == 1 && ref $rest[0] eq 'HASH' ? %{ $rest[0] } : @rest;
    my %wire;
    $wire{mode} = "$opts{mode}" if defined $opts{mode};
    $wire{timeout} = 0 + $opts{timeout} if defined $opts{timeout};
    my @args;
    if (defined $targets) {
        @args = (ref $targets eq 'ARRAY' ? [map {"$_"} @$targets] : "$targets");
    } elsif (%wire) {
        @args = (undef);
    }
    push @args, \%wire if %wire;
    $self->_verb('relay', @args);
}

# redirect($uri), redirect([$uri, ...]) or redirect($uri1, $uri2, ...).
sub redirect {
    my ($self, @contacts) = @_;
    @contacts = @{ $contacts[0] } if @contacts == 1 && ref $contacts[0] eq 'ARRAY';
    $self->_verb('redirect', [map {"$_"} @contacts]);
}

sub drop          { $_[0]->_verb('drop') }
sub set_ruri      { $_[0]->_verb('set_ruri', "$_[1]") }
sub set_header    { $_[0]->_verb('set_header', "$_[1]", "$_[2]") }
sub add_header    { $_[0]->_verb('add_header', "$_[1]", "$_[2]") }
sub remove_header { $_[0]->_verb('remove_header', "$_[1]") }
sub record_route  { $_[0]->_verb('record_route') }

# -- services: the route decides whether, the core does the RFC work -------------
# Options come as a list (password => 'secret') or one hash reference; the
# ones left undef are not sent.
sub _opts {
    my (@rest) = @_;
    return @rest == 1 && ref $rest[0] eq 'HASH' ? %{ $rest[0] } : @rest;
}

# authenticate($realm, password => $pw | ha1 => $hex | credentials => $file,
#              algorithms => ['SHA-256', 'MD5'], identity => 0)
sub authenticate {
    my ($self, $realm, @rest) = @_;
    my %o = _opts(@rest);
    my %wire;
    $wire{$_} = "$o{$_}" for grep { defined $o{$_} } qw(password credentials);
    if (defined $o{ha1}) {
        $wire{ha1} = ref $o{ha1} eq 'HASH' ? { map { ($_ => "$o{ha1}{$_}") } keys %{ $o{ha1} } }
                                           : "$o{ha1}";
    }
    if (defined $o{algorithms}) {
        $wire{algorithms} = [map {"$_"} ref $o{algorithms} eq 'ARRAY' ? @{ $o{algorithms} }
                                                                     : $o{algorithms}];
    }
    $wire{identity} = $o{identity} ? \1 : \0 if defined $o{identity};
    $self->_verb('authenticate', "$realm", %wire ? \%wire : ());
}

# save(), save(max_expires => 3600, aor => 'sip:alice@example.com', ...)
sub save {
    my ($self, @rest) = @_;
    my %o = _opts(@rest);
    my %wire = map { ($_ => int $o{$_}) }
               grep { defined $o{$_} } qw(min_expires max_expires default_expires max_contacts);
    $wire{aor} = "$o{aor}" if defined $o{aor};
    $self->_verb('save', %wire ? \%wire : ());
}

# lookup(), lookup(code => 480, reason => 'Offline', timeout => 20, aor => $uri)
sub lookup {
    my ($self, @rest) = @_;
    my %o = _opts(@rest);
    my %wire;
    $wire{$_} = "$o{$_}" for grep { defined $o{$_} } qw(aor reason);
    $wire{code} = int $o{code} if defined $o{code};
    $wire{timeout} = 0 + $o{timeout} if defined $o{timeout};
    $self->_verb('lookup', %wire ? \%wire : ());
}

sub fix_contact    { $_[0]->_verb('fix_contact') }
sub limit_duration { $_[0]->_verb('limit_duration', 0 + ($_[1] // 0)) }

# add_profile($name, $key?): count the call in a profile while it lasts ($req->dialog->count).
sub add_profile {
    my ($self, $name, $key) = @_;
    $self->_verb('add_profile', "$name", defined $key ? "$key" : ());
}

# -- for the session -------------------------------------------------------------
sub decision_message {
    my ($self) = @_;
    my %msg = (type => 'decision', id => $self->{id}, verbs => $self->{verbs});
    if (exists $self->{vars0}) {
        my $v = $self->{ev}{vars};
        my $now = ref $v eq 'HASH' && %$v ? BabelSIP::canonical($v) : '';
        $msg{vars} = ref $v eq 'HASH' ? $v : {} if $now ne $self->{vars0};
    }
    return \%msg;
}

# -- header helpers shared with BabelSIP::Reply -----------------------------------
sub _first {
    my ($list, $name) = @_;
    my $want = lc($name // '');
    for my $h (@{ $list || [] }) {
        return $h->[1] if lc $h->[0] eq $want;
    }
    return undef;
}

sub _all {
    my ($list, $name) = @_;
    return map { [@$_] } @{ $list || [] } unless defined $name;
    my $want = lc $name;
    return map { $_->[1] } grep { lc $_->[0] eq $want } @{ $list || [] };
}

sub _pairs {
    my ($headers) = @_;
    return [map { ["$_", "$headers->{$_}"] } sort keys %$headers] if ref $headers eq 'HASH';
    return [map { ["$_->[0]", "$_->[1]"] } @$headers] if ref $headers eq 'ARRAY';
    Carp::croak('reply(): headers must be an array of [name, value] or a hash');
}


package BabelSIP::Reply;
# The reply of on_failure / on_reply: $reply->code, ->reason, ->header($n), ->headers($n).
use strict;
use warnings;

sub new     { bless { r => $_[1] }, $_[0] }
sub code    { $_[0]{r}{code} // 0 }
sub reason  { $_[0]{r}{reason} // '' }
sub header  { BabelSIP::Request::_first($_[0]{r}{headers}, $_[1]) }
sub headers { BabelSIP::Request::_all($_[0]{r}{headers}, $_[1]) }


package BabelSIP::Store;
# The host's key/value store with TTL (PROTOCOL.md §5). Each call is a round
# trip to the host: the worker keeps answering pings while it waits, and
# events that arrive meanwhile wait their turn. A refused call dies with the
# host's message ("kv.incr: value of 'k' is not an integer").
use strict;
use warnings;

sub new    { bless { s => $_[1], ev => $_[2] }, $_[0] }
sub get    { $_[0]->call('kv.get', "$_[1]") }
sub delete { $_[0]->call('kv.delete', "$_[1]") ? 1 : 0 }

sub set {
    my ($self, $key, $value, $ttl) = @_;
    $self->call('kv.set', "$key", $value, defined $ttl ? 0 + $ttl : undef);
    return;
}

sub incr {
    my ($self, $key, $delta, $ttl) = @_;
    return $self->call('kv.incr', "$key", int($delta // 1), defined $ttl ? 0 + $ttl : undef);
}

# Any host call by name (PROTOCOL.md §5), e.g. one this SDK version does not wrap.
sub call {
    my ($self, $op, @args) = @_;
    Carp::croak('store: the worker is not connected to a host') unless $self->{s};
    my $value;
    # Re-raised with croak so the error points at the script's line.
    eval { $value = $self->{s}->call($op, \@args, $self->{ev}); 1 }
        or Carp::croak($@ =~ s/\s+\z//r);
    return $value;
}


package BabelSIP::Registrar;
# The registrar's location service, read-only: $req->registrar->lookup($aor)
# returns an array reference of the live bindings, best q first, each a hash
# with contact, expires (seconds left), q, received, transport, path,
# user_agent, instance, reg_id.
use strict;
use warnings;
our @CARP_NOT = ('BabelSIP::Store');

sub new    { bless { store => BabelSIP::Store->new($_[1], $_[2]) }, $_[0] }
sub lookup { $_[0]{store}->call('registrar.lookup', "$_[1]") }


package BabelSIP::Dialog;
# The calls tracked as dialogs: $req->dialog->count($profile, $key?) is how
# many are active in a profile ($req->add_profile counts a call in one).
use strict;
use warnings;
our @CARP_NOT = ('BabelSIP::Store');

sub new { bless { store => BabelSIP::Store->new($_[1], $_[2]) }, $_[0] }

sub count {
    my ($self, $profile, $key) = @_;
    return 0 + $self->{store}->call('dialog.count', "$profile", defined $key ? "$key" : ());
}

1;
